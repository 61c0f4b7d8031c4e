"""The server process: the root nursery that runs every service (`main.serve`)."""
