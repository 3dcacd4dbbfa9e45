"""Slurm's USR2 lead follows the plan's save where the run leaves signal_lead_s at its default (helper 242,
explore48): an 8B fft's USR2 came 120 s before the time limit with ~317 s of checkpoint to write, so every
time-limited attempt was killed mid-save and lost the steps since its last checkpoint; launch only warned."""

from __future__ import annotations

from ftctl.preflight import check_signal_lead
from tests.render_fixtures import prepared


def _lead(method="fft", output="/shared/runs/r1", more=(), **flags):
    flags.setdefault("time", "24:00:00")
    r = prepared(list(more), backend="slurm", method=method, gpus="8xA100-80GB",
                 model_name_or_path="meta-llama/Llama-3.1-8B", output_dir=output, **flags)  # fmt: skip
    return r


def test_the_default_lead_grows_to_the_save_the_plan_writes():
    r = _lead()
    assert r.spec.signal_lead_s == 300 and "#SBATCH --signal=B:USR2@300\n" in r.text
    assert check_signal_lead(r.spec, r.plan) == []  # the warning's own count: nothing left to say
    # the step under way: twice the plan's step (was 60 s, assumed, beside a 257 s write: 317 s, lead 360)
    need = 257 + 2 * r.plan.step_s
    assert any(n.startswith(f"signal_lead_s=300: Slurm's USR2 comes 300 s before the time limit, for a save of ~{need:.0f} s")
               for n in r.plan.notes)  # fmt: skip
    assert _lead(output="s3://b/r1").spec.signal_lead_s == 540  # written on the node, then uploaded
    assert _lead(method="lora").spec.signal_lead_s == 120  # adapters: a few hundred MB


def test_a_lead_the_run_gives_or_a_short_time_limit_bounds_it():
    assert _lead(more=["signal_lead_s=200"]).spec.signal_lead_s == 200  # the run's own: kept, and warned
    # the run's own at the default's value too (it was taken as left out, and grown to 300)
    kept = _lead(more=["signal_lead_s=120"])
    assert kept.spec.signal_lead_s == 120 and "#SBATCH --signal=B:USR2@120\n" in kept.text
    assert check_signal_lead(kept.spec, kept.plan)  # and warned, as 200 is
    assert _lead(time="00:08:00").spec.signal_lead_s == 240  # half the limit: the job trains between notices
    assert _lead(time="00:04:00").spec.signal_lead_s == 120  # no longer than half: the default
    # no --time, and no controller here to say the partition's limit: a lead past an unknown limit would send USR2 as
    # the job starts (every attempt saving and requeuing without a step), so the default stays, and preflight warns
    assert _lead(time=None).spec.signal_lead_s == 120
    assert check_signal_lead(_lead(time=None).spec, _lead(time=None).plan)


def test_without_time_the_partitions_limit_for_such_a_job_bounds_it(monkeypatch):
    """No --time: the job's limit is the partition's DefaultTime (else MaxTime; sinfo's answer, reused), which bounds
    the lead as --time does; a partition list takes the shortest."""
    from ftctl.slurm import doctor
    from tests.test_slurm_time242 import REPORT

    monkeypatch.setattr(doctor, "ask", lambda *a, **k: REPORT)
    assert doctor.job_limit_s("gpu") == 3600 and doctor.job_limit_s("capped") == 4 * 3600
    assert doctor.job_limit_s("long") is None and doctor.job_limit_s("gpu,capped") == 3600
    assert _lead(time=None).spec.signal_lead_s == 300  # the default partition (gpu*): 1:00:00
    assert _lead(time=None, output="s3://b/r1").spec.signal_lead_s == 540
    assert _lead(time=None, partition="long").spec.signal_lead_s == 120  # no limit: USR2 never comes for time
