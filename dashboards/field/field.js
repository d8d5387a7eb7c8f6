// The crew's phone page: its jobs live from /ws/crew, one-tap moves, its position from the
// browser's geolocation. Plain JS, no build step; everything is served by the IOC API.
"use strict";
(() => {
  const STORE = "cityops.field";
  const CREW_STATES = new Set(["dispatched", "en_route", "on_site"]);
  const LABEL = { acknowledge: "Acknowledge", en_route: "En route", on_site: "On site", done: "Done" };
  const SEVERITY = { 1: "low", 2: "medium", 3: "high", 4: "critical" };
  // Position reports: when the phone moved more than SEND_MOVE_M (but not more often than every
  // SEND_MIN_MS), and every SEND_EVERY_MS anyway so the centre knows the phone is alive.
  const SEND_EVERY_MS = 30_000;
  const SEND_MOVE_M = 50;
  const SEND_MIN_MS = 5_000;
  const RETRY_MAX_MS = 15_000;
  const REQUEST_TIMEOUT_MS = 15_000;
  const PROBE_MS = 25_000;

  const $ = (id) => document.getElementById(id);
  let session = null; // {token, username, crew_id}
  const jobs = new Map(); // incident_id -> incident (this crew's active jobs)
  const versions = new Map(); // incident_id -> newest version seen (stale answers are ignored)
  const cards = new Map(); // incident_id -> card state
  let city = null; // GET /map: tile URL and district outlines
  let crewInfo = null;

  // -- HTTP ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function detailOf(data, fallback) {
    const d = data && data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    return fallback;
  }

  async function api(method, path, body) {
    if (!session) throw new ApiError(401, "not logged in");
    const headers = { Authorization: `Bearer ${session.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort.signal,
      });
    } catch {
      throw new ApiError(0, "no connection to the operations centre; try again when the banner is gone");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = await resp.json();
    } catch {
      /* not JSON */
    }
    if (resp.status === 401) {
      logout(`Signed out: ${detailOf(data, "the session expired")}. Log in again.`);
      throw new ApiError(401, detailOf(data, "not logged in"));
    }
    if (!resp.ok) throw new ApiError(resp.status, detailOf(data, `${resp.status} ${resp.statusText}`));
    return { status: resp.status, data };
  }

  // -- formatting ------------------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");
  function clock(iso, seconds = false) {
    if (!iso) return "";
    const t = new Date(iso);
    return `${pad(t.getHours())}:${pad(t.getMinutes())}${seconds ? `:${pad(t.getSeconds())}` : ""}`;
  }
  function ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  const typeLabel = (t) => (t || "incident").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  function metres(a, b) {
    const r = 6371008.8;
    const rad = Math.PI / 180;
    const dlat = (b.lat - a.lat) * rad;
    const dlon = (b.lon - a.lon) * rad;
    const h = Math.sin(dlat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dlon / 2) ** 2;
    return 2 * r * Math.asin(Math.min(1, Math.sqrt(h)));
  }
  const distanceText = (m) => (m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(m < 10_000 ? 1 : 0)} km`);

  // -- notices (things that happened to jobs that are no longer on the list) -------------------

  function notice(text, warn = false) {
    const el = document.createElement("div");
    el.className = `notice${warn ? " warn" : ""}`;
    const span = document.createElement("span");
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.setAttribute("aria-label", "dismiss");
    close.textContent = "×";
    close.onclick = () => el.remove();
    el.append(span, close);
    $("notices").prepend(el);
    while ($("notices").children.length > 5) $("notices").lastElementChild.remove();
  }

  // -- jobs ------------------------------------------------------------------------------------

  function order(a, b) {
    const queued = (j) => (j.state === "dispatched" ? 1 : 0);
    return (
      queued(a) - queued(b) ||
      String(a.dispatched_at).localeCompare(String(b.dispatched_at)) ||
      a.incident_id - b.incident_id
    );
  }

  function gone(incident) {
    const id = incident.incident_id;
    switch (incident.state) {
      case "resolved":
        return `Job #${id} (${incident.title}) is resolved: the sensors confirm recovery. Thank you.`;
      case "closed":
        return `Job #${id} (${incident.title}) is closed.`;
      case "cancelled":
        return `Job #${id} (${incident.title}) was cancelled by the operations centre.`;
      default:
        return `Job #${id} (${incident.title}) was taken off your crew by the operations centre.`;
    }
  }

  // Apply an incident as the API or the channel sent it; ``live``: it came as it happened.
  function apply(incident, live) {
    const id = incident.incident_id;
    if ((versions.get(id) ?? -1) > incident.version) return; // an older view than we have
    versions.set(id, incident.version);
    const mine = incident.crew_id === session.crew_id && CREW_STATES.has(incident.state);
    const had = jobs.has(id);
    if (mine) {
      jobs.set(id, incident);
      if (!had && live) {
        notice(`New job #${id}: ${incident.title}`);
        if (navigator.vibrate) navigator.vibrate([200, 100, 200]);
      }
    } else if (had) {
      jobs.delete(id);
      const err = cards.get(id)?.err.textContent;
      notice(gone(incident) + (err ? ` (${err})` : ""), incident.state !== "resolved" && incident.state !== "closed");
    }
    render();
  }

  function replaceAll(list) {
    jobs.clear();
    for (const incident of list) {
      versions.set(incident.incident_id, incident.version);
      jobs.set(incident.incident_id, incident);
    }
    render();
  }

  function moves(j) {
    if (j.state === "dispatched") return j.crew_acknowledged_at ? ["en_route"] : ["acknowledge", "en_route"];
    if (j.state === "en_route") return ["on_site"];
    if (j.state === "on_site") return j.resolve_pending ? [] : ["done"];
    return [];
  }

  function stateText(j) {
    if (j.state === "dispatched")
      return j.crew_acknowledged_at
        ? `Dispatched · you acknowledged at ${clock(j.crew_acknowledged_at)}`
        : "Dispatched to you · not acknowledged yet";
    if (j.state === "en_route") return `En route since ${clock(j.en_route_at)}`;
    if (j.resolve_pending) return "Done reported · waiting for the sensors to confirm recovery";
    return `On site since ${clock(j.arrived_at)}`;
  }

  function render() {
    const sorted = [...jobs.values()].sort(order);
    for (const [id, card] of cards) {
      if (!jobs.has(id)) {
        if (card.map) card.map.remove();
        card.el.remove();
        cards.delete(id);
      }
    }
    sorted.forEach((job, i) => {
      const box = i === 0 ? $("current") : $("queued");
      const index = i === 0 ? 0 : i - 1;
      let card = cards.get(job.incident_id);
      if (!card) {
        card = makeCard(job);
        cards.set(job.incident_id, card);
      }
      if (box.children[index] !== card.el) {
        box.insertBefore(card.el, box.children[index] || null);
        if (card.map) card.map.invalidateSize();
      }
      update(card, job);
    });
    $("current-h").hidden = sorted.length === 0;
    $("queued-h").hidden = sorted.length < 2;
    $("queued-n").textContent = sorted.length > 1 ? `(${sorted.length - 1})` : "";
    $("no-jobs").hidden = sorted.length > 0;
  }

  function makeCard(job) {
    const el = $("card-t").content.firstElementChild.cloneNode(true);
    el.id = `job-${job.incident_id}`;
    el.dataset.id = job.incident_id;
    const q = (sel) => el.querySelector(sel);
    const card = {
      el,
      err: q(".err"),
      note: q(".note"),
      actions: q(".actions"),
      mapEl: q(".map"),
      map: null,
      busy: false,
      shownMoves: null,
      pendingDetail: "",
    };
    card.note.id = `note-${job.incident_id}`;
    q(".note-l").htmlFor = card.note.id;
    card.actions.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-action]");
      if (button) tap(job.incident_id, button.dataset.action);
    });
    return card;
  }

  function update(card, j) {
    const q = (sel) => card.el.querySelector(sel);
    const sev = Number(j.severity) || 1;
    q(".sev").className = `sev sev${sev}`;
    q(".sev").textContent = `S${sev} ${SEVERITY[sev] || ""}`;
    q(".type").textContent = typeLabel(j.type);
    q(".jid").textContent = `#${j.incident_id}`;
    q(".title").textContent = j.title;
    q(".district").textContent = j.district || "no district";
    updateAge(card, j);
    const state = q(".state");
    state.textContent = stateText(j);
    state.dataset.state = j.resolve_pending ? "resolve_pending" : j.state;
    state.classList.toggle("waiting", Boolean(j.resolve_pending));
    card.el.dataset.state = j.state;
    q(".why").textContent = j.explanation || "";
    const assets = j.assets || [];
    q(".assets").textContent = assets.length
      ? `${assets.length} affected asset${assets.length > 1 ? "s" : ""}: ${assets.slice(0, 4).join(", ")}${assets.length > 4 ? ", …" : ""}`
      : "";
    const list = moves(j);
    const key = list.join(",");
    if (card.shownMoves !== key) {
      card.shownMoves = key;
      card.actions.replaceChildren(
        ...list.map((m) => {
          const b = document.createElement("button");
          b.type = "button";
          b.className = m;
          b.dataset.action = m;
          b.textContent = LABEL[m];
          return b;
        }),
      );
    }
    for (const b of card.actions.querySelectorAll("button")) b.disabled = card.busy;
    q(".note-l").hidden = list.length === 0;
    if (!j.resolve_pending) card.pendingDetail = "";
    q(".pending").textContent = card.pendingDetail;
    updateMap(card, j);
  }

  function updateAge(card, j) {
    const parts = [`dispatched ${ago(j.dispatched_at)}`, `opened ${ago(j.opened_at)}`];
    if (j.arrive_due && j.state !== "on_site")
      parts.push(`${j.arrive_breached ? "late: was due" : "arrive by"} ${clock(j.arrive_due)}`);
    card.el.querySelector(".age").textContent = parts.join(" · ");
  }

  async function tap(id, action) {
    const card = cards.get(id);
    if (!card || card.busy) return;
    card.busy = true;
    card.err.textContent = "";
    for (const b of card.actions.querySelectorAll("button")) b.disabled = true;
    const pressed = card.actions.querySelector(`button[data-action="${action}"]`);
    if (pressed) pressed.textContent = `${LABEL[action]}…`;
    try {
      const { status, data } = await api("POST", `/crew/jobs/${id}/${action}`, { note: card.note.value.trim() });
      card.note.value = "";
      if (status === 202) {
        card.pendingDetail = data.detail;
        apply(data.incident, false);
      } else {
        apply(data, false);
      }
    } catch (e) {
      card.err.textContent = `${LABEL[action]} failed: ${e.message}`;
      // The page's view was out of date (a move from the centre not seen yet): fetch the job.
      if (e.status === 404 || e.status === 409) refresh(id);
    } finally {
      card.busy = false;
      if (pressed) pressed.textContent = LABEL[action];
      const job = jobs.get(id);
      if (job && cards.get(id) === card) update(card, job);
    }
  }

  async function refresh(id) {
    try {
      const { data } = await api("GET", `/crew/jobs/${id}`);
      apply(data, true);
    } catch (e) {
      if (e.status === 404 && jobs.has(id)) {
        jobs.delete(id);
        notice(`Job #${id} is no longer assigned to your crew.`, true);
        render();
      }
    }
  }

  // -- maps ------------------------------------------------------------------------------------

  function addBase(card) {
    if (!city || card.baseAdded || !card.map) return;
    card.baseAdded = true;
    if (city.tile_url) {
      L.tileLayer(city.tile_url, { attribution: city.attribution || "", maxZoom: 19 }).addTo(card.map);
    }
    if (city.outlines && city.outlines.features && city.outlines.features.length) {
      L.geoJSON(city.outlines, {
        interactive: false,
        style: { color: "#37474f", weight: 1.5, fill: false, dashArray: "4 4" },
      }).addTo(card.map);
    }
  }

  function updateMap(card, j) {
    if (j.lat == null || j.lon == null) {
      if (card.map) {
        card.map.remove();
        card.map = null;
      }
      card.mapEl.classList.add("none");
      card.mapEl.textContent = "No location: the incident's devices are not registered.";
      card.el.querySelector(".distance").textContent = "";
      return;
    }
    const at = [j.lat, j.lon];
    if (!card.map) {
      card.mapEl.classList.remove("none");
      card.mapEl.textContent = "";
      card.map = L.map(card.mapEl, {
        zoomControl: true,
        attributionControl: Boolean(city && city.tile_url),
        dragging: !L.Browser.mobile,
        scrollWheelZoom: false,
        boxZoom: false,
        keyboard: false,
      });
      card.area = L.circle(at, {
        radius: Math.max(Number(j.radius_m) || 0, 25),
        color: "#b71c1c",
        weight: 2,
        fillOpacity: 0.12,
        interactive: false,
      }).addTo(card.map);
      card.marker = L.circleMarker(at, {
        radius: 9,
        color: "#ffffff",
        weight: 3,
        fillColor: "#b71c1c",
        fillOpacity: 1,
        className: "incident-marker",
      })
        .bindTooltip(`#${j.incident_id}`)
        .addTo(card.map);
      card.fitted = null;
      addBase(card);
    } else {
      card.area.setLatLng(at).setRadius(Math.max(Number(j.radius_m) || 0, 25));
      card.marker.setLatLng(at);
    }
    placeMe(card, j);
  }

  // The crew's own position on a card's map, the distance to the incident, and the view.
  function placeMe(card, j) {
    if (!card.map) return;
    const me = here();
    const dist = card.el.querySelector(".distance");
    dist.replaceChildren();
    if (me) {
      const ll = [me.lat, me.lon];
      if (!card.me) {
        card.me = L.circleMarker(ll, {
          radius: 8,
          color: "#ffffff",
          weight: 3,
          fillColor: "#0d47a1",
          fillOpacity: 1,
          className: "crew-marker",
        })
          .bindTooltip("you")
          .addTo(card.map);
      } else {
        card.me.setLatLng(ll);
      }
      card.me.setStyle({ dashArray: me.source === "gps" ? null : "3 3", fillOpacity: me.source === "gps" ? 1 : 0.4 });
      const m = metres(me, { lat: j.lat, lon: j.lon });
      dist.append(
        `${distanceText(m)} away (straight line${me.source === "gps" ? "" : ", from your last reported position"})`,
      );
      dist.dataset.metres = String(Math.round(m));
    } else {
      dist.append("Distance: waiting for your position");
    }
    const nav = document.createElement("a");
    nav.href = `geo:${j.lat},${j.lon}?q=${j.lat},${j.lon}`;
    nav.textContent = "Navigate";
    dist.append(" ", nav);
    // Fit incident and crew once per (incident place, kind of position), then leave the view alone.
    const fit = `${j.lat},${j.lon},${me ? me.source : ""}`;
    if (card.fitted !== fit) {
      card.fitted = fit;
      if (me && metres(me, { lat: j.lat, lon: j.lon }) < 30_000) {
        card.map.fitBounds(L.latLngBounds([[j.lat, j.lon], [me.lat, me.lon]]).pad(0.25), { maxZoom: 16 });
      } else {
        card.map.setView([j.lat, j.lon], 15);
      }
    }
  }

  let cityLoading = false;

  async function loadCity() {
    if (city || cityLoading) return;
    cityLoading = true;
    try {
      city = (await api("GET", "/map")).data;
      for (const card of cards.values()) addBase(card);
    } catch {
      city = null; // the markers still show; outlines come with the next connection
    } finally {
      cityLoading = false;
    }
  }

  // -- live channel ----------------------------------------------------------------------------

  let ws = null;
  let lastId = null;
  let live = false;
  let retries = 0;
  let retryTimer = null;
  let lastUpdate = null;

  function banner() {
    const box = $("offline");
    if (!session || live) {
      box.hidden = true;
      return;
    }
    const first = lastUpdate === null;
    box.hidden = false;
    box.classList.toggle("connecting", first);
    $("offline-title").textContent = first ? "Connecting to the operations centre…" : "Offline — reconnecting…";
    $("offline-detail").textContent = first
      ? ""
      : `Jobs as of ${clock(lastUpdate, true)}; new dispatches and changes arrive when the connection is back.`;
  }

  function setLive(on) {
    live = on;
    if (on) {
      retries = 0;
      lastUpdate = new Date().toISOString();
      loadCity();
    }
    banner();
  }

  let resyncAsked = false;
  function connect() {
    clearTimeout(retryTimer);
    if (!session || (ws && ws.readyState <= WebSocket.OPEN)) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${proto}//${location.host}/ws/crew?token=${encodeURIComponent(session.token)}`;
    if (lastId !== null) url += `&last_event_id=${lastId}`;
    const sock = new WebSocket(url);
    ws = sock;
    sock.onmessage = (m) => {
      if (ws !== sock) return;
      onEvent(JSON.parse(m.data));
    };
    sock.onclose = (e) => {
      if (ws !== sock) return;
      ws = null;
      setLive(false);
      if (e.code === 1008) {
        logout(`Signed out: ${e.reason || "the session is no longer valid"}. Log in again.`);
        return;
      }
      if (!session) return;
      // 1013 after a resync notice: at once. Otherwise (1013 alone: the centre cannot reach its
      // database yet) back off, with jitter.
      const delay = e.code === 1013 && resyncAsked ? 0 : Math.min(RETRY_MAX_MS, 1000 * 2 ** retries) * (0.75 + Math.random() / 2);
      resyncAsked = false;
      retries += 1;
      retryTimer = setTimeout(connect, delay);
    };
  }

  function onEvent(ev) {
    if (ev.type === "snapshot") {
      lastId = ev.id;
      crewInfo = ev.crew || null;
      showWho();
      setLive(true);
      replaceAll(ev.jobs || []);
      return;
    }
    if (ev.type === "resume") {
      setLive(true);
      return;
    }
    if (ev.type === "resync") { // the server closes with 1013 next; we come back with lastId
      resyncAsked = true;
      return;
    }
    if (ev.type === "health") return; // what the centre cannot reach; no change to the jobs
    if (typeof ev.id === "number") lastId = ev.id;
    lastUpdate = new Date().toISOString();
    if (ev.type === "job" && ev.incident) apply(ev.incident, true);
  }

  function drop() {
    // The network is gone (or the page is leaving): close now rather than wait for TCP to notice.
    if (ws) ws.close();
  }

  // A phone in a dead zone often gets no "offline" event and its socket no close for minutes:
  // ask the centre now and then, and treat no answer as a lost connection.
  // Past half its life, the token is renewed (a shift outlasts the 8-hour login); the renewal
  // doubles as the probe. Its own iat/exp say when.
  function pastHalfLife(token) {
    try {
      const c = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return Date.now() / 1000 > c.iat + (c.exp - c.iat) / 2;
    } catch {
      return false;
    }
  }

  async function probe() {
    if (!session || !live) return;
    try {
      if (pastHalfLife(session.token)) {
        const { data } = await api("POST", "/token/refresh");
        if (session && data && data.access_token) {
          session = { ...session, token: data.access_token };
          sessionStorage.setItem(STORE, JSON.stringify(session));
        }
      } else {
        await api("GET", "/me"); // a 401 (the token expired) logs out with the reason
      }
    } catch (e) {
      if (e.status === 0) drop();
    }
  }

  window.addEventListener("offline", drop);
  window.addEventListener("online", () => {
    if (session && !live) {
      retries = 0;
      connect();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && session && !ws) connect();
  });

  // -- position --------------------------------------------------------------------------------

  let watch = null;
  let fix = null; // the browser's latest position
  let sent = null; // the last position the API accepted, and when
  let sending = false;
  let sendTimer = null;
  let heartbeat = null;
  let holdUntil = 0;

  function here() {
    if (fix) return { ...fix, source: "gps" };
    if (crewInfo && crewInfo.lat != null) return { lat: crewInfo.lat, lon: crewInfo.lon, source: "reported" };
    return null;
  }

  function geoStatus(kind, text) {
    const el = $("geo");
    el.className = `geo ${kind}`;
    el.dataset.status = kind;
    el.textContent = text;
  }

  function startGeo() {
    if (!("geolocation" in navigator)) {
      geoStatus("bad", "Location not available on this browser: your position is not shared.");
      return;
    }
    if (!window.isSecureContext) {
      geoStatus("bad", "Location needs a secure (https) connection: your position is not shared.");
      return;
    }
    geoStatus("", "Location: waiting for a position fix…");
    watch = navigator.geolocation.watchPosition(onFix, onGeoError, {
      enableHighAccuracy: true,
      maximumAge: 15_000,
      timeout: 60_000,
    });
    heartbeat = setInterval(maybeSend, SEND_EVERY_MS);
  }

  function stopGeo() {
    if (watch !== null) navigator.geolocation.clearWatch(watch);
    watch = null;
    clearInterval(heartbeat);
    clearTimeout(sendTimer);
    fix = null;
    sent = null;
    holdUntil = 0;
  }

  function onFix(p) {
    fix = { lat: p.coords.latitude, lon: p.coords.longitude, accuracy: p.coords.accuracy };
    for (const [id, card] of cards) placeMe(card, jobs.get(id));
    maybeSend();
  }

  function onGeoError(e) {
    if (e.code === 1) {
      if (watch !== null) navigator.geolocation.clearWatch(watch);
      watch = null;
      geoStatus(
        "bad",
        "Location not allowed: your position is not shared. Allow location for this page in the browser's settings.",
      );
    } else if (e.code === 2) {
      geoStatus("bad", "Location unavailable right now; still trying.");
    } else if (!sent) {
      geoStatus("", "Location: waiting for a position fix…");
    }
  }

  function maybeSend() {
    if (!fix || sending || !session) return;
    const now = Date.now();
    clearTimeout(sendTimer);
    if (now < holdUntil) {
      sendTimer = setTimeout(maybeSend, holdUntil - now);
      return;
    }
    if (sent) {
      const since = now - sent.at;
      const moved = metres(sent, fix) > SEND_MOVE_M;
      if (since < SEND_EVERY_MS && !(moved && since >= SEND_MIN_MS)) {
        if (moved) sendTimer = setTimeout(maybeSend, SEND_MIN_MS - since);
        return;
      }
    }
    send();
  }

  async function send() {
    const at = { ...fix };
    sending = true;
    try {
      await api("POST", "/crew/location", { lat: +at.lat.toFixed(6), lon: +at.lon.toFixed(6) });
      sent = { lat: at.lat, lon: at.lon, at: Date.now() };
      const accuracy = at.accuracy ? ` (±${Math.round(at.accuracy)} m)` : "";
      geoStatus("ok", `Position shared with the operations centre at ${clock(new Date().toISOString(), true)}${accuracy}.`);
    } catch (e) {
      holdUntil = Date.now() + 10_000;
      if (session) geoStatus("bad", `Position not shared: ${e.message}`);
    } finally {
      sending = false;
    }
    if (session && fix && (fix.lat !== at.lat || fix.lon !== at.lon)) maybeSend();
  }

  // -- session ---------------------------------------------------------------------------------

  function showWho() {
    if (!session) {
      $("who").textContent = "";
      return;
    }
    const crew = crewInfo && crewInfo.name ? `${crewInfo.name} (${session.crew_id})` : `crew ${session.crew_id}`;
    $("who").textContent = `${crew} · ${session.username}`;
  }

  let ticker = null;
  let prober = null;

  function start() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    showWho();
    banner();
    loadCity();
    connect();
    startGeo();
    ticker = setInterval(() => {
      for (const [id, card] of cards) updateAge(card, jobs.get(id));
    }, 20_000);
    prober = setInterval(probe, PROBE_MS);
  }

  function logout(message = "") {
    const was = session;
    session = null;
    sessionStorage.removeItem(STORE);
    clearTimeout(retryTimer);
    clearInterval(ticker);
    clearInterval(prober);
    if (ws) {
      const sock = ws;
      ws = null;
      sock.close();
    }
    live = false;
    lastId = null;
    lastUpdate = null;
    stopGeo();
    jobs.clear();
    versions.clear();
    render();
    crewInfo = null;
    city = null;
    $("notices").replaceChildren();
    $("app").hidden = true;
    $("logout").hidden = true;
    $("offline").hidden = true;
    $("login").hidden = false;
    $("password").value = "";
    if (was && !$("username").value) $("username").value = was.username;
    $("loginerr").textContent = message;
    showWho();
  }

  $("loginform").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("login-btn");
    $("loginerr").textContent = "";
    button.disabled = true;
    try {
      const form = new URLSearchParams({ username: $("username").value.trim(), password: $("password").value });
      let resp;
      try {
        resp = await fetch("/token", { method: "POST", body: form });
      } catch {
        throw new Error("no connection to the operations centre; try again");
      }
      const data = await resp.json().catch(() => null);
      if (!resp.ok) throw new Error(detailOf(data, `${resp.status} ${resp.statusText}`));
      if (data.role !== "crew" || !data.crew_id) {
        throw new Error(`${form.get("username")} is a ${data.role}, not a crew member: this page is for crews (the wall screen is at /).`);
      }
      session = { token: data.access_token, username: form.get("username"), crew_id: data.crew_id };
      sessionStorage.setItem(STORE, JSON.stringify(session));
      $("password").value = "";
      start();
    } catch (err) {
      $("loginerr").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });

  $("logout").addEventListener("click", () => logout());

  async function resume() {
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
    } catch {
      saved = null;
    }
    if (!saved || !saved.token) return;
    session = saved;
    try {
      await api("GET", "/me"); // a 401 logs out with the reason
    } catch (e) {
      if (e.status === 401) return;
    }
    if (session) start();
  }

  // For tests and debugging in the browser's console.
  window.cityopsField = {
    get socket() {
      return ws;
    },
    get lastEventId() {
      return lastId;
    },
    probe,
  };

  resume();
})();
