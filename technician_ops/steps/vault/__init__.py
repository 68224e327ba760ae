"""steps/vault"""
