"""Outside development: no usable secret defaults, no demo accounts, users made with the CLI."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx
import pytest
from pydantic import ValidationError

from cityops.core.contracts import Topics
from ioc import ApiServer, IocSettings
from tests.ioc.conftest import ioc_settings

SECRET = "a-production-secret-of-at-least-32-characters"


def test_production_refuses_to_start_without_a_secret() -> None:
    with pytest.raises(ValidationError, match="CITYOPS_API_JWT_SECRET must be set"):
        IocSettings(environment="production")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at least 32 characters"):
        IocSettings(environment="production", jwt_secret="short")  # type: ignore[arg-type]


def test_the_environment_variables_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOPS_API_ENVIRONMENT", "production")
    monkeypatch.setenv("CITYOPS_API_JWT_SECRET", SECRET)
    monkeypatch.setenv("CITYOPS_API_ACK_S", "[60, 50, 40, 30]")
    s = IocSettings()
    assert s.environment == "production" and s.jwt_secret is not None and s.ack_s == (60, 50, 40, 30)


async def test_production_has_no_demo_users_and_takes_users_from_the_cli(
    topics: Topics, database: str, uid: str
) -> None:
    settings = ioc_settings(topics, database, uid, environment="production", jwt_secret=SECRET)
    async with ApiServer(settings) as api, httpx.AsyncClient(base_url=api.url) as http:
        demo = await http.post("/token", data={"username": "admin", "password": "admin"})
        assert demo.status_code == 401 and "wrong user name or password" in demo.text

        env = {**os.environ, "CITYOPS_PG_DSN": database, "CITYOPS_USER_PASSWORD": "correct horse battery"}
        assert await _cli(["ada", "--role", "dispatcher"], env) == (0, "")
        code, err = await _cli(["ada", "--role", "dispatcher"], env)
        assert code == 2 and "exists" in err
        code, err = await _cli(["bob", "--role", "viewer"], {**env, "CITYOPS_USER_PASSWORD": "short"})
        assert code == 2 and "at least 8 characters" in err
        code, err = await _cli(["cy", "--role", "crew"], env)
        assert code == 2 and "needs a crew_id" in err

        login = await http.post("/token", data={"username": "ada", "password": "correct horse battery"})
        assert login.status_code == 200 and login.json()["role"] == "dispatcher"
        me = await http.get("/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        assert me.json() == {"username": "ada", "role": "dispatcher", "crew_id": None}
        wrong = await http.post("/token", data={"username": "ada", "password": "correct horse"})
        assert wrong.status_code == 401


async def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``cityops users add ARGS``; returns its exit code and what it said on stderr (errors only)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cityops", "users", "add", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    code = await proc.wait()
    text = err.decode()
    return code, "" if code == 0 else text
