#!/usr/bin/env python3
"""Independent references for test_events, written straight from the
definitions with numpy (no prefix sums, no running sums).

  events_ref.py score IN   IN: u32 n, u32 n_ev, f32 A[n][n], u32 starts[n_ev]
                           prints "modularity conductance"
  events_ref.py rule IN    IN: u32 n, f32 gamma, u32 window, u32 min_len,
                           u32 max_len, f32 s[n]; prints the event starts
"""
import struct
import sys

import numpy as np


def score(buf):
    n, n_ev = struct.unpack_from("<II", buf, 0)
    A = np.frombuffer(buf, dtype="<f4", count=n * n, offset=8).astype(np.float64).reshape(n, n)
    starts = list(np.frombuffer(buf, dtype="<u4", count=n_ev, offset=8 + 4 * n * n))
    label = np.zeros(n, dtype=np.int64)
    for e, s in enumerate(starts):
        label[s:] = e
    k = A.sum(axis=1)
    two_m = A.sum()
    same = label[:, None] == label[None, :]
    q = ((A - np.outer(k, k) / two_m) * same).sum() / two_m
    phis = []
    for e in range(n_ev):
        inside = label == e
        cut = A[inside][:, ~inside].sum()
        vol = k[inside].sum()
        den = min(vol, two_m - vol)
        phis.append(cut / den if den > 0 else 0.0)
    print("%.12g %.12g" % (q, float(np.mean(phis))))


def rule(buf):
    n, gamma, window, min_len, max_len = struct.unpack_from("<IfIII", buf, 0)
    s = np.frombuffer(buf, dtype="<f4", count=n, offset=20).astype(np.float64)
    starts = [0]
    for t in range(1, n):
        length = t - starts[-1]
        if length >= max_len:
            starts.append(t)
            continue
        w = s[max(0, t - window):t]
        if length >= min_len and s[t] > w.mean() + gamma * w.std():
            starts.append(t)
    print(" ".join(str(x) for x in starts))


if __name__ == "__main__":
    data = open(sys.argv[2], "rb").read()
    {"score": score, "rule": rule}[sys.argv[1]](data)
