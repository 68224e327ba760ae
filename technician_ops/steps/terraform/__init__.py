"""steps/terraform"""
