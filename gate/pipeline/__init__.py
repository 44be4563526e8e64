"""The public pipeline that takes an accepted upload to a decision: its jobs, dispatch and reconciliation."""
