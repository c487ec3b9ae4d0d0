"""proscribe.agent.sensors"""
