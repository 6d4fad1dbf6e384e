"""The API's side of the agents' requests, besides their routes (api/routers/agent.py): checking
signed requests (auth), signing every answer (replies), holding idle polls until a job may exist
(held_polls), recording polls and started jobs' steps that arrive together in one statement
(batchers), and deleting nonces whose signature window has passed (nonce_janitor)."""
