"""Releases: publishing a blessed model where the web app loads it, champion/challenger, rollback."""
