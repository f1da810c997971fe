#!/usr/bin/env python3
"""A command channel into a kernel map through a user ring buffer (the way
bpftime pushes map updates from user space), on programs/ring_commands.o.

User space writes typed `struct command` samples (set key=value, delete key,
bump key by n) into the USER_RINGBUF `commands`; the SEC("syscall") program
`apply`, run with BPF_PROG_TEST_RUN, drains them with bpf_user_ringbuf_drain
and applies each to the hash map `table`.  User space then reads the map back
and checks it against the same commands applied to a Python dict.

    sudo python examples/ring_commands.py                  # a few commands, then the rate
    sudo python examples/ring_commands.py --commands 200000 --batch 4096

The rate part sends --commands random commands over --keys keys, --batch at a
time (write_batch of dicts, encoded by the sample type, then one apply run),
and prints commands/s for the whole round trip.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import struct
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if (REPO / "pybpf" / "__init__.py").exists():
    sys.path.insert(0, str(REPO))  # run from a checkout: its pybpf, not an older installed one

import pybpf  # noqa: E402

OBJECT = REPO / "programs" / "ring_commands.o"


def apply(obj) -> int:
    """Runs the drain once: returns how many commands it applied."""
    return obj.programs["apply"].test_run().retval


def model_apply(model: dict, cmd: dict) -> None:
    """What the BPF program does with ``cmd``, on a dict."""
    key, op = cmd["key"], cmd["op"]
    if op == "CMD_SET":
        model[key] = cmd["value"]
    elif op == "CMD_DELETE":
        model.pop(key, None)
    else:  # CMD_BUMP (u64 arithmetic)
        model[key] = (model.get(key, 0) + cmd["value"]) & (2**64 - 1)


def show(table: dict) -> None:
    for key in sorted(table):
        print(f"  {key:<16} {table[key]}")


def demo(obj, commands) -> bool:
    """A few commands, one per kind, through the typed view and through write()."""
    model: dict = {}
    cmd = commands.reserve()             # a struct command inside the ring
    cmd.op = "CMD_SET"                   # enum command_op, by name
    cmd.key = "apples"
    cmd.value = 3
    commands.submit(cmd)
    script = [
        {"op": "CMD_SET", "key": "pears", "value": 10},
        {"op": "CMD_BUMP", "key": "apples", "value": 4},
        {"op": "CMD_BUMP", "key": "plums", "value": 1},
        {"op": "CMD_SET", "key": "figs", "value": 99},
        {"op": "CMD_DELETE", "key": "figs"},
    ]
    for c in script:
        commands.write(c)
    model_apply(model, {"op": "CMD_SET", "key": "apples", "value": 3})
    for c in script:
        model_apply(model, c)
        print(f"sent {c['op']:<10} {c['key']:<8} {c.get('value', '')}")
    done = apply(obj)
    table = dict(obj.maps["table"].items())
    print(f"the kernel applied {done} commands; table:")
    show(table)
    ok = table == model
    print("table matches the commands" if ok else f"table differs from the commands: expected {model}")
    return ok


def rate(obj, commands, count: int, keys: int, batch: int, seed: int) -> bool:
    """``count`` random commands, ``batch`` at a time, half as dicts (typed) and half
    packed by hand (bytes); returns whether the table matches the model."""
    rng = random.Random(seed)
    names = [f"key{i}" for i in range(keys)]
    ops = ("CMD_SET", "CMD_BUMP", "CMD_BUMP", "CMD_DELETE")
    op_value = {"CMD_SET": 1, "CMD_DELETE": 2, "CMD_BUMP": 3}  # enum command_op
    packer = struct.Struct("<II16sQ")                          # struct command, by hand
    model = dict(obj.maps["table"].items())
    sent = {"dicts": 0, "bytes": 0}
    spent = {"dicts": 0.0, "bytes": 0.0}
    applied = 0
    kind = "dicts"
    while sum(sent.values()) < count:
        n = min(batch, count - sum(sent.values()))
        cmds = [{"op": rng.choice(ops), "key": rng.choice(names), "value": rng.randrange(1, 1000)}
                for _ in range(n)]
        for c in cmds:
            model_apply(model, c)
        if kind == "bytes":  # the same channel without the typed encoding
            cmds = [packer.pack(op_value[c["op"]], 0, c["key"].encode(), c["value"]) for c in cmds]
        start = time.perf_counter()
        written = commands.write_batch(cmds)   # dicts are encoded by struct command
        applied += apply(obj)
        spent[kind] += time.perf_counter() - start
        if written != n:
            print(f"the ring took {written} of {n} commands: use a smaller --batch", file=sys.stderr)
            return False
        sent[kind] += n
        kind = "bytes" if kind == "dicts" else "dicts"
    table = dict(obj.maps["table"].items())
    for kind, how in (("dicts", f"write_batch of {batch} dicts, encoded by the sample type"),
                      ("bytes", f"write_batch of {batch} commands packed by hand with struct")):
        if sent[kind]:
            print(f"{sent[kind]} commands in {spent[kind]:.3f} s: {sent[kind] / spent[kind]:,.0f} commands/s "
                  f"({how}, then one apply run)")
    total = sum(sent.values())
    ok = table == model and applied == total
    print(f"table matches the commands: {len(table)} keys, {applied} commands applied" if ok else
          f"table differs from the commands ({len(table)} keys, expected {len(model)}; "
          f"{applied} of {total} applied)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=100_000, help="commands for the rate (default %(default)s)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys (at most 4096, the map's size)")
    parser.add_argument("--batch", type=int, default=2048, help="commands per write_batch + apply")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--object", default=str(OBJECT))
    args = parser.parse_args()
    with pybpf.load(args.object) as obj, pybpf.UserRingBuffer(obj.maps["commands"]) as commands:
        ok = demo(obj, commands)
        ok = rate(obj, commands, args.commands, args.keys, args.batch, args.seed) and ok
        failed, malformed = obj.variables["failed"].get(), obj.variables["malformed"].get()
        print(f"deletes of missing keys and refused updates: {failed}, malformed samples: {malformed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
