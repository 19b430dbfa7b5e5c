"""Progress output: a plain line every so often when the output is not a terminal, instead of tqdm's bar."""

import io

from pipeline.progress import PlainProgress, progress


class Clock:
    """Seconds that the test moves on by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_one_line_per_interval_and_one_at_the_end_with_step_loss_rate_and_time_left():
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(total=100, desc="latent ddpm", interval=30, stream=out, clock=clock)
    for step in range(1, 101):
        clock.now += 1.0  # one step per second
        bar.set_postfix(loss=f"{1 / step:.4g}")  # as the scripts do: this step's loss, then the step counted
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "latent ddpm: step 30/100 (30%), loss 0.03333, 1 steps/s, 1 min 10 s left",
        "latent ddpm: step 60/100 (60%), loss 0.01667, 1 steps/s, 40 s left",
        "latent ddpm: step 90/100 (90%), loss 0.01111, 1 steps/s, 10 s left",
        "latent ddpm: step 100/100 (100%), loss 0.01, 1 steps/s, done in 1 min 40 s",
    ]
    assert "\r" not in out.getvalue()


def test_a_resumed_run_counts_only_its_own_steps_and_a_loop_left_early_says_where():
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(total=1000, initial=900, interval=60, stream=out, clock=clock)
    for _ in range(20):
        clock.now += 0.5
        bar.update(1)
    bar.close()  # stopped at step 920 (a signal): the last line says so
    assert out.getvalue() == "step 920/1000 (92%), 2 steps/s, 40 s left\n"


def test_disabled_prints_nothing_and_a_captured_stdout_gets_plain_lines(capsys):
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(total=3, disable=True, interval=0, stream=out, clock=clock)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""
    assert isinstance(progress(5), PlainProgress)  # pytest captures stdout: not a terminal
