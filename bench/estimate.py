"""What a profile would take on machines of other speeds: the run's estimate at given probe figures.

    python -m bench.estimate --profile default --probes 70,25
    python -m bench.estimate --profile full --probes 56 --per-worker 0.70

`reid-prune run` prices its plan with two probes: the machine probe (training images/s at all
cores, what `reid-prune doctor` prints) and the per-worker probe (at `orchestration.torch_threads`).
A machine known only by its machine probe gets per-worker speeds of `--per-worker` x that figure
(training), with inference and rendering in the ratios this machine measured (`--inference-ratio`,
`--render-ratio`: per-worker inference and rendering images/s per machine-probe training image/s).
Domains not on disk are counted from the generator's plan; nothing is trained or rendered.
"""

from __future__ import annotations

from bench.settings_cli import settings_parser
from reid_models.config import load_settings
from reid_models.estimate import Speed, describe, plan_run


def main() -> None:
    parser = settings_parser(__doc__, default_profile="default")
    parser.add_argument("--probes", default="70,25", help="machine-probe training images/s, comma-separated")
    parser.add_argument("--per-worker", type=float, default=0.63,
                        help="per-worker / machine training speed (0.63 to 0.88 measured here, RESULTS s.1)")
    parser.add_argument("--inference-ratio", type=float, default=2.6)
    parser.add_argument("--render-ratio", type=float, default=9.0)
    args = parser.parse_args()
    settings = load_settings(args.params, args.profile, args.overrides)
    for probe in (float(p) for p in args.probes.split(",")):
        speed = Speed(probe * args.per_worker, probe * args.inference_ratio, probe * args.render_ratio,
                      settings.orchestration.torch_threads)
        print(f"profile {settings.profile}, probe {probe:g} training images/s "
              f"({speed.train:.1f} per worker): {describe(plan_run(settings, speed))}")


if __name__ == "__main__":
    main()
