"""What the kit's commands print: a warning once, not once per policy."""

import logging

from inference.simulate import main as simulate


def test_the_simulator_says_its_entropy_warning_once(repo_root, caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="inference.simulate"):
        assert simulate(["--traces", str(repo_root / "configs/simulate/traces/toy-math.jsonl"), "--hardware",
                         "recorded", "--orders", "4", "--workers", "1"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    entropy = [w for w in warnings if "carry no `entropy`" in w]
    assert len(entropy) == 1 and "aimo3_entropy, aimo3_entropy_tail" in entropy[0]
