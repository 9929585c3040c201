# At import: switch the runner's limits off from inside the candidate's process. The candidate imports the runner's
# own modules and replaces the per-epoch time limit, the channel's deadline, the kill, the NaN guard and the loss
# check with no-ops; then learn sleeps far past the job's epoch limit. The limits live in the runner's process, so
# the job must still end as a timeout at the runner's per-epoch limit.
import time

try:
    import nncaption.netapi.child as _c
    import nncaption.netapi.job as _j
    import nncaption.netapi.rules as _r
    import nncaption.netapi.supervise as _s
    import nncaption.netapi.train as _t
    import nncaption.netapi.wire as _w

    _recv = _w.Channel.recv
    _w.Channel.recv = lambda self, deadline, **kw: _recv(self, None, **kw)
    _t.Runner.timed_out = lambda self, *a, **k: None
    _r.reported_float = lambda value: 0.0
    _r.batch_request_failure = lambda *a, **k: None
    _r.learned_failure = lambda *a, **k: None
    _t.batch_request_failure = _r.batch_request_failure
    _t.learned_failure = _r.learned_failure
    _s.ChildProcess.kill = lambda self: None
    _c.params_finite = lambda model: True
    _c.read_loss = lambda model: 0.5
    _j.JobSpec.epoch_time_limit_s = 1e9
    _j.JobSpec.decode_limit_s = property(lambda self: 1e9)
    print("NNCAPTION-MARK patched", flush=True)
except Exception as _e:  # noqa: BLE001
    print(f"NNCAPTION-MARK patch-failed {_e!r}", flush=True)


def hostile_learn():
    time.sleep(__SLEEP__)
