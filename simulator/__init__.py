"""Fleet simulator: many real agents (agent.daemon.Agent) in one process against a real control
plane, with simulated steps, measured from the client side. Not shipped to hosts."""
