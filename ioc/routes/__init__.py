"""The IOC's HTTP and WebSocket routes, one module per concept."""
