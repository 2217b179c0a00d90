"""rq-dashboard behind HTTP Basic: mounted at /dashboard in the API (`app`), or served alone by
`python -m api.dashboard`; `guard` stands between a browser and rq-dashboard's views."""
