"""Engine access: the one client of the Docker Engine API (``client``), log streams read
straight from its socket (``httpstream``), and discovery of containers from its listing and
event stream (``discovery``)."""
