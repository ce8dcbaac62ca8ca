"""dmabuf-emu: scenarios, launching and stopping services, runs, checks and reports."""
