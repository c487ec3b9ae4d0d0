"""proscribe.agent.spool"""
