"""What the control plane's server processes (API, worker, their CLI commands) share and hosts
never need: settings from the environment. The Temporal connection is temporal_client.connect."""
