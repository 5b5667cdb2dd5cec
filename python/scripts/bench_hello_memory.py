"""Coordinator memory against large Hellos (S9 #3): 4 clients whose Hellos are ~48 MiB each
(2 datasets x 100,000 feature names of 240 bytes), then a job on their dataset that waits 15 s for
a fifth client and fails. Prints the coordinator's VmHWM and VmRSS (MB, from /proc) at each step.

    cargo build -p shoal-coordinator
    python python/scripts/bench_hello_memory.py target/debug/shoal-coordinator

Measured on the 2-core dev machine: before views shared the Hello's datasets, 410 MB with the
Hellos, 625 MB one second into the job, 839 MB peak; after, 412 MB peak throughout, 209 MB once
the clients are gone. The descriptions of all connected clients' Hellos together are also capped
(serve --max-announced-bytes, 256 MiB: about five such Hellos).
"""
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from shoal.v1 import federation_pb2, federation_pb2_grpc, jobs_pb2, jobs_pb2_grpc

bin_ = sys.argv[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
tmp = tempfile.mkdtemp()
proc = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", f"{tmp}/s", "--out", f"{tmp}/r"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def hwm():
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield line.split()[0][:-1], int(line.split()[1]) // 1024

time.sleep(1.0)
print("idle", dict(hwm()))
opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
names = [f"feature-{i:06d}-" + "x" * 224 for i in range(100_000)]  # 240 bytes each
stop = threading.Event()

def client(i):
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
    q = queue.Queue()
    hello = federation_pb2.Hello(protocol_version=2, client_name=f"big-{i}", model_kinds=["logreg"], task_kinds=["fit", "evaluate"],
        datasets=[federation_pb2.DatasetInfo(name=f"big{k}" if k else "big", train_examples=10, test_examples=2,
                                             feature_names=names, class_names=["a", "b"]) for k in range(2)])
    q.put(federation_pb2.ClientMessage(hello=hello))
    def gen():
        while not stop.is_set():
            try:
                yield q.get(timeout=0.5)
            except queue.Empty:
                yield federation_pb2.ClientMessage(heartbeat=federation_pb2.Heartbeat())
    try:
        for _ in federation_pb2_grpc.FederationStub(ch).Connect(gen()):
            if stop.is_set():
                break
    except grpc.RpcError:
        pass

ts = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
for t in ts:
    t.start()
time.sleep(8)
print("4 big Hellos", dict(hwm()))
jobs = jobs_pb2_grpc.JobsStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=opts))
spec = 'kind = "train"\ndataset = "big"\nrounds = 10\n[clients]\nmin_available_clients = 5\nwait_for_clients_secs = 15\n'
jobs.Submit(jobs_pb2.SubmitRequest(spec=spec))
time.sleep(1)
print("job started", dict(hwm()))
time.sleep(16)
print("after a job waited 15 s", dict(hwm()))
stop.set()
time.sleep(3)
print("clients gone", dict(hwm()))
proc.terminate(); proc.wait()
