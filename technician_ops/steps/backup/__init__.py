"""steps/backup"""
