# At import: try to write outside the working directory (paths filled in by the test), report the results on stdout
# (only the runner's outputs come back from a job's directory).
import json
import os

_targets = __TARGETS__
_results = {}
for _path in _targets:
    try:
        with open(_path, "w") as _f:
            _f.write("pwned")
        _results[_path] = "written"
    except OSError as _e:
        _results[_path] = f"refused: {_e}"
with open("writes.json", "w") as _f:  # writing inside the working directory works
    json.dump(_results, _f)
print("NNCAPTION-MARK writes " + json.dumps(_results), flush=True)
