"""RQ workers that run the catalog's tasks and record every job state change in the index."""
