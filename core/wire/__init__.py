"""Wire protocol between agent and collector: request signing (shared by both sides)."""

# What a collector may set the agents' heartbeat interval to (``[server] heartbeat_interval``,
# named in every heartbeat's answer); the agent clamps what it is told to the same range.
MIN_HEARTBEAT_INTERVAL = 15.0
MAX_HEARTBEAT_INTERVAL = 3600.0
