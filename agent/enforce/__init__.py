"""proscribe.agent.enforce"""
