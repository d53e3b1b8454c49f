"""Infrastructure: settings, database, plugin host and hook specifications, contracts, jobs, errors,
logs, identity and audit."""
