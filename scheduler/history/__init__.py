"""The SQL history (jobs, their events, log snapshots) that the front ends write and the dashboard reads."""
