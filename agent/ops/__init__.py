"""Operating the agent from outside its process (``container-agent health``).

Nothing here is imported by the running agent, and nothing here imports the agent's own
layers: these commands must start fast (a container's HEALTHCHECK runs one every interval).
"""
