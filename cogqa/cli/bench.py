"""``cogqa bench throughput``: measured training and decode tokens/s of shapes, beside the roofline prediction."""

from __future__ import annotations

from ..units import parse_contexts
from . import print_json


def mean_decode_context(context: int, decode_tokens: int) -> float:
    """Mean number of tokens attended to while decoding ``decode_tokens`` tokens that end at ``context`` (tokens)."""
    return context - decode_tokens + (decode_tokens + 1) / 2


def cmd_bench_throughput(args) -> int:
    """Build each shape on the device, time training and decode, and print them beside the prediction."""
    import torch

    from ..errors import require
    from ..hardware import default_device, default_dtype, get_hardware, local_profile
    from ..model import GQADecoder, torch_dtype
    from ..throughput import bench_model, parse_shape, predict

    device = args.device or default_device()
    require(
        not device.startswith("cuda") or torch.cuda.is_available(), f"--device {device}: CUDA is not available here"
    )
    dtype = args.dtype or default_dtype(device)
    torch_dtype(dtype)
    require(
        args.context > args.decode_tokens >= 1,
        f"--decode-tokens ({args.decode_tokens}) must be at least 1 and less than --context ({args.context} tokens)",
    )
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [parse_shape(s) for s in args.shapes.split(";") if s.strip()]
    hw = local_profile(device, dtype) if args.hardware == "local" else get_hardware(args.hardware)
    rows = []
    for s in shapes:
        m = GQADecoder(s, max_seq_len=args.context).to(device=device, dtype=torch_dtype(dtype))
        r = bench_model(
            m, args.context, args.batch, decode_tokens=args.decode_tokens, repeats=args.repeats, train=not args.no_train
        )
        r.update(predict(s, mean_decode_context(args.context, args.decode_tokens), args.batch, hw, dtype))
        r["predicted_train_tokens_per_s"] = predict(s, args.context, args.batch, hw, dtype)[
            "predicted_train_tokens_per_s"
        ]
        for kind in ("decode", "train"):
            if f"{kind}_tokens_per_s" in r:
                pred = r[f"predicted_{kind}_tokens_per_s"]
                lo, hi = r[f"{kind}_tokens_per_s_range"]
                r[f"{kind}_measured_over_predicted"] = r[f"{kind}_tokens_per_s"] / pred
                r[f"{kind}_ratio_error"] = (hi - lo) / 2 / pred  # half the spread over the repeats
        r["shape"] = f"L{s.layers} d{s.hidden_size} H=({s.n_heads},{s.n_kv_heads}) dh{s.head_dim}"
        rows.append(r)
        del m
    meta = {
        "device": device,
        "dtype": dtype,
        "context": args.context,
        "batch": args.batch,
        "decode_tokens": args.decode_tokens,
        "hardware": hw.to_dict(),
    }
    if args.json:
        print_json({**meta, "rows": rows})
        return 0
    print(
        f"{device} {dtype}, context {args.context} tokens, batch {args.batch}; predicted = roofline on profile "
        f"{hw.name} (decode at the mean decode context, training at T_bar = T/2)"
    )
    print(
        f"{'shape':34s} {'decode tok/s':>13s} {'predicted':>10s} {'meas/pred':>12s} | "
        f"{'train tok/s':>12s} {'predicted':>10s} {'meas/pred':>12s}"
    )
    for r in rows:
        tr = (
            (
                f"{r['train_tokens_per_s']:12.1f} {r['predicted_train_tokens_per_s']:10.1f} "
                f"{r['train_measured_over_predicted']:6.2f} ±{r['train_ratio_error']:4.2f}"
            )
            if "train_tokens_per_s" in r
            else f"{'-':>12s}"
        )
        print(
            f"{r['shape']:34s} {r['decode_tokens_per_s']:13.1f} {r['predicted_decode_tokens_per_s']:10.1f} "
            f"{r['decode_measured_over_predicted']:6.2f} ±{r['decode_ratio_error']:4.2f} | {tr}"
        )
    print(
        "tokens/s per device (medians); meas/pred = measured / predicted ± half its spread over the repeats "
        "(1.00 = the roofline is exact; < 1: overheads the roofline ignores)"
    )
    return 0


def register(sub) -> None:
    """Register the ``bench`` command group."""
    bn = sub.add_parser("bench", help="benchmarks: throughput of shapes side by side")
    bs = bn.add_subparsers(dest="bench_command", metavar="BENCH")
    bs.required = True
    p = bs.add_parser("throughput", help="training and decode tokens/s, measured and predicted by the roofline")
    p.add_argument("--shapes", required=True, help="';'-separated: L,d,n_h,n_kv,d_h or 470M:32,8")
    p.add_argument(
        "--context", type=lambda s: parse_contexts(s)[0], default=1024, help="context in tokens (default 1024)"
    )
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--decode-tokens", type=int, default=16, help="tokens decoded per timing (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timings per measurement; the median is kept (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument(
        "--hardware",
        default="local",
        help="profile for the prediction (default local: this machine, measured once and cached)",
    )
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON (per shape decode_tokens_per_s beside predicted_decode_tokens_per_s)",
    )
    p.set_defaults(func=cmd_bench_throughput)
