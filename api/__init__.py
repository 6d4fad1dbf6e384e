"""The HTTP face of the control plane: routers, auth dependencies and error mapping."""
