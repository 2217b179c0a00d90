"""RQ workers that run registered tasks and record every job state change in the index."""
