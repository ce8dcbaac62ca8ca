"""sim: the same services in one process on virtual time, every choice made by one scheduler.

`dmabuf-emu sim` runs the real ExporterService and ImporterService classes (exporter_svc/,
importer_svc/), and under them the real protocol halves (protocol/), reliability layer, message
faults, leases, heartbeats, fence table, DMA and copy engines, device faults and byte stamping
(runtime/), with four things injected through runtime/env.py: the loop (sim/world.py: virtual
nanoseconds, simulated processes and their actors), the transport (sim/network.py: the same
encoded frames over in-process links), the memory (sim/memory.py: in-process buffers) and the
entropy (sim/scheduler.py: every draw a logged decision). sim/driver.py is `dmabuf-emu run`
on that clock; sim/run.py writes a run directory the checker judges, unchanged; sim/schedule.py
reads and writes schedule.json, which `dmabuf-emu replay` re-executes byte for byte.

Modules: scheduler (Scheduler, Chooser, Guide, ListGuide, DecisionLog, SimRandom), world (World,
SimProcess, ActorLoop), network (SimNetwork, SimTransport), memory (SimMemory), driver
(SimDeployment), schedule (read_schedule, ScheduleWriter, sources_sha256), run (simulate,
simulate_in_memory), options (SimOptions: chosen delivery, job and move budgets). The schedule
search (`dmabuf-emu explore`, issue 14): search/ (trial: one schedule judged in memory; random,
pct, exhaustive: the searches), shrink (ddmin to a 1-minimal witness), explore (the search's
loop, files, workers and Dask; witness.md through checker.explain).

Where a real and a simulated run can differ, and why:
- Time. Callbacks take no virtual time, so no service ever waits for a CPU: timers fire exactly
  when due (a real poll loop wakes late, by a millisecond or, under load, much more), a request is
  served the moment it arrives, a lease never runs out because a process was starved. The
  modelled costs are the copy engine's (25 us per 256 KiB chunk) and a DMA chunk's access (10 us
  after its fence check): world.LANE_COST_NS. Real runs'
  latencies (map p50, move latency) are therefore lower in the simulator; races that need a
  starved process (tests/test_load.py's) need a pause fault there. A few timers may be made late
  by a decision (sim/driver.py: the pressure tick, an importer's refill and DMA), on time by
  default: that is how a replay of a real run (sim/realguide.py) gives its starved processes back.
- Order within a service. Each service's DMA engine (`importer-N.dma`) and copy engine
  (`exporter.copy`) are actors of their own: work of two actors due at the same instant runs in
  the scheduler's order, where a real process runs its loop's order (deferred calls, then timers
  by time, then sockets). The simulated orders are a superset; within one actor the real order
  holds.
- The network. Delays are drawn (30 us plus an exponential of mean 70 us, at most 2 ms; see
  network.py), per-link order is kept as a zmq connection keeps it. Under chosen delivery (the
  schedule search) a frame between services arrives when the scheduler says, 30 us to 2 ms after
  it was sent; one due while its receiver has work of its own is read after that work. Not simulated: high-water
  marks (nothing is dropped for a full queue), MAXMSGSIZE and the too_large path, multipart
  garbage, CURVE and its ZAP handler (sim refuses `secure`), reconnection delays. A frame a
  process sent before it was killed still arrives; one sent to a dead or replaced connection is
  dropped.
- Memory. Segments are bytearrays: the same runtime/memory.py and runtime/fences.py code views
  them, but one step runs alone, so a read cannot see a write torn halfway through a chunk, as a
  real read racing a real writer in another process can. Nothing is left in /dev/shm, and a
  killed exporter's segments are not unlinked by a resource tracker.
- Processes. Starting one takes no time (the importers begin at the instant the exporter does, a
  restarted importer the instant it is restarted, where real processes take tens of ms to start
  and import); a kill is instant and exact; a paused process's timers all run late, as after
  SIGCONT. deploy.jsonl's `fault` and `service_restarted` of a restart come when the new
  incarnation is started, before it is ready (a real run writes them after it was started).
- The driver (sim/driver.py) re-implements deploy/run.py's drive(), deploy/launcher.py's up,
  wait_ready and down, and deploy/control.py's call_all on virtual time with the same control
  messages, polls and timeouts (it sends no ping before start: nothing has to be listening first).
  runtime/process_faults.py's ProcessFaults and schedule() are the real ones.
- Shell code that does not run in the simulator: ServiceShell.serve() and install_signals()
  (the world stops a service's loop and calls end_serving() itself; SIGTERM calls finish() as the
  handler would), publish_endpoints() (nobody reads DIR/run/), load_credentials() (the secret is
  derived from the seed, the importers' tokens are derived as dmabuf-emu derives them: the
  capability checks still run), ZmqTransport and the zmq sockets, the services' __main__ argument
  parsing, and the flush per event line (events are buffered: nothing is SIGKILLed for real).
- Identity. Fixed pids (exporter 1000, importer-N 1000 + N + 100 x incarnation, deploy 999), run
  id `sim<seed>`, endpoints `sim://<service>/rpc|control`, t_ns from 1e9. An `internal_error`
  event's traceback names source files by absolute path: byte-identical on one checkout, not
  across checkouts.
"""
