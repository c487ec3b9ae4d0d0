"""proscribe.agent.reporter"""
