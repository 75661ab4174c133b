#!/usr/bin/python3
"""A small CRI client: drives containerd's CRI plugin through one pod's life as kubelet would,
asserting every answer. Its gRPC stubs come from the CRI api.proto (runtime.v1), compiled with
grpcio-tools into a temp dir at each run.

usage: cri_client.py PROTO SOCKET lifecycle HANDLER IMAGE CGROUP_PARENT LOG_DIR
       cri_client.py PROTO SOCKET refused HANDLER IMAGE CGROUP_PARENT LOG_DIR
       cri_client.py PROTO SOCKET bench RUNS IMAGE CGROUP_PARENT LOG_DIR HANDLER...

lifecycle prints one JSON object with what it saw; refused expects RunPodSandbox to fail and
prints the error's details; bench prints, per runtime handler, the
RunPodSandbox -> StartContainer answered times in seconds (runs interleaved across handlers).
Pods use the host's network namespace (no CNI).

SOCKET is containerd's unix socket, or tcp:HOST:PORT for containerd's TCP listener (a Berth node
in a VM, reached through a forwarded port). Over TCP the pod's log directory is on the remote
machine: lifecycle then prints the log's path instead of reading it, for the caller to check.
"""
import json
import os
import re
import shutil
import sys
import tempfile
import time

RPC_TIMEOUT = 120


def stubs(proto):
    """Compiles `proto` (without its gogoproto options, which only steer Go code) into a temp
    dir and imports the generated modules."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="berth-cri-api.")
    try:
        with open(proto) as f:
            text = f.read()
        text = re.sub(r'^import "github.com/gogo/protobuf/gogoproto/gogo.proto";\n', "", text, flags=re.M)
        text = re.sub(r"^option \(gogoproto\.[^\n]*\n", "", text, flags=re.M)
        with open(os.path.join(out, "api.proto"), "w") as f:
            f.write(text)
        rc = protoc.main(["protoc", "-I" + out, "--python_out=" + out, "--grpc_python_out=" + out,
                          os.path.join(out, "api.proto")])
        if rc != 0:
            sys.exit("protoc failed on %s" % proto)
        sys.path.insert(0, out)
        import api_pb2
        import api_pb2_grpc
        return api_pb2, api_pb2_grpc
    finally:
        shutil.rmtree(out, ignore_errors=True)


class Cri:
    def __init__(self, proto, socket):
        import grpc

        self.pb, grpc_mod = stubs(proto)
        self.remote = socket.startswith("tcp:")
        target = socket[len("tcp:"):] if self.remote else "unix:" + socket
        self.channel = grpc.insecure_channel(target)
        if self.remote:
            # A freshly (re)started remote containerd may take a while to listen.
            grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT * 3)
        self.rt = grpc_mod.RuntimeServiceStub(self.channel)
        self.img = grpc_mod.ImageServiceStub(self.channel)

    def pod_config(self, name, cgroup_parent, log_dir):
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=name + "-uid", namespace="berth-test", attempt=0),
            # No hostname: a host-network pod shares the host's UTS namespace too.
            log_directory=log_dir,
            labels={"berth.test": name},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.POD, ipc=pb.POD)
                ),
            ),
        )

    def container_config(self, image, command):
        pb = self.pb
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main", attempt=0),
            image=pb.ImageSpec(image=image),
            command=command,
            log_path="main.log",
            linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20)),
        )

    def run_pod(self, handler, name, image, cgroup_parent, log_dir, command):
        pb = self.pb
        config = self.pod_config(name, cgroup_parent, log_dir)
        pod = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                    timeout=RPC_TIMEOUT).pod_sandbox_id
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=self.container_config(image, command), sandbox_config=config),
            timeout=RPC_TIMEOUT).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        return pod, cid

    def teardown(self, pod, cid):
        pb = self.pb
        self.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=RPC_TIMEOUT)
        self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)


def check(cond, what):
    if not cond:
        sys.exit("cri_client: " + what)


def lifecycle(cri, handler, image, cgroup_parent, log_dir):
    pb, rt = cri.pb, cri.rt
    seen = {}
    version = rt.Version(pb.VersionRequest(), timeout=RPC_TIMEOUT)
    check(version.runtime_api_version == "v1", "Version: %s" % version)
    seen["runtime"] = version.runtime_name + " " + version.runtime_version
    if cri.remote:
        # A node pulls the workload's image from its registry first, as kubelet does.
        ref = cri.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=RPC_TIMEOUT).image_ref
        check(ref.startswith("sha256:"), "PullImage: %r" % ref)
        status = cri.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=RPC_TIMEOUT)
        check(status.image.id == ref, "ImageStatus: %s" % status)
        seen["pulled"] = ref

    pod, cid = cri.run_pod(handler, "berth-pod", image, cgroup_parent, log_dir,
                           ["sh", "-c", "echo started; exec sleep 600"])
    check(len(pod) == 64 and len(cid) == 64, "ids %r %r" % (pod, cid))
    seen["pod"], seen["container"] = pod, cid

    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT).status
    check(status.state == pb.SANDBOX_READY, "pod not ready: %s" % status)
    check(status.linux.namespaces.options.network == pb.NODE, "pod network: %s" % status)
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=RPC_TIMEOUT).status
    check(status.state == pb.CONTAINER_RUNNING, "container not running: %s" % status)
    check(status.image.image.endswith(image) or status.image_ref, "container image: %s" % status)

    # In the pod's pid namespace, pid 1 is the sandbox's pause process (sh), not the sleep.
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo pid1 $(cat /proc/1/comm); echo err >&2; exit 3"],
                                       timeout=60), timeout=RPC_TIMEOUT)
    seen["exec"] = {"stdout": r.stdout.decode(), "stderr": r.stderr.decode(), "exit_code": r.exit_code}
    check(r.exit_code == 3, "ExecSync exit code %d" % r.exit_code)
    check(r.stderr == b"err\n", "ExecSync stderr %r" % r.stderr)
    check(r.stdout == b"pid1 sh\n", "ExecSync stdout %r" % r.stdout)

    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/proc/self/cgroup"], timeout=60),
                    timeout=RPC_TIMEOUT)
    check(r.exit_code == 0, "ExecSync cat: %s" % r)
    seen["cgroup"] = r.stdout.decode()
    # The limit as the container's own cgroup shows it (cgroup v2 with its own namespace);
    # hosts without cgroup v2 controllers have no such file.
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "cat /sys/fs/cgroup/memory.max 2>&1"],
                                       timeout=60), timeout=RPC_TIMEOUT)
    seen["memory_max"] = r.stdout.decode().strip()

    stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=RPC_TIMEOUT).stats
    check(stats.attributes.id == cid, "ContainerStats id: %s" % stats)
    check(stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 0, "ContainerStats cpu: %s" % stats)
    check(stats.memory.working_set_bytes.value > 0, "ContainerStats memory: %s" % stats)
    seen["stats"] = {"cpu_ns": stats.cpu.usage_core_nano_seconds.value,
                     "working_set": stats.memory.working_set_bytes.value}

    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=RPC_TIMEOUT)
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=RPC_TIMEOUT).status
    check(status.state == pb.CONTAINER_EXITED, "container not exited: %s" % status)
    # sleep ignores nothing: SIGTERM ends it (128 + 15) before the 10 s grace runs out.
    seen["exit_code"] = status.exit_code
    check(status.exit_code == 143, "container exit code %d" % status.exit_code)
    if cri.remote:
        seen["log_path"] = os.path.join(log_dir, "main.log")
    else:
        with open(os.path.join(log_dir, "main.log")) as f:
            log = f.read()
        check(" stdout F started\n" in log, "container log %r" % log)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
    left = rt.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
    check(not left, "containers left: %s" % left)

    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT).status
    check(status.state == pb.SANDBOX_NOTREADY, "pod still ready: %s" % status)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)
    left = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    check(not left, "pods left: %s" % left)
    print(json.dumps(seen))


def refused(cri, handler, image, cgroup_parent, log_dir):
    import grpc

    pb = cri.pb
    config = cri.pod_config("berth-refused", cgroup_parent, log_dir)
    try:
        pod = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                   timeout=RPC_TIMEOUT).pod_sandbox_id
    except grpc.RpcError as e:
        left = cri.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
        check(not left, "pods left after a refused RunPodSandbox: %s" % left)
        print(e.details())
        return
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)
    sys.exit("cri_client: RunPodSandbox succeeded")


def bench(cri, runs, image, cgroup_parent, log_dir, handlers):
    times = {h: [] for h in handlers}
    for i in range(runs):
        for h in handlers:
            start = time.monotonic()
            pod, cid = cri.run_pod(h, "bench-%s-%d" % (h, i), image, cgroup_parent, log_dir, ["sleep", "600"])
            times[h].append(time.monotonic() - start)
            cri.teardown(pod, cid)
    print(json.dumps(times))


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    proto, socket, mode = sys.argv[1:4]
    cri = Cri(proto, socket)
    if mode == "lifecycle" and len(sys.argv) == 8:
        lifecycle(cri, *sys.argv[4:8])
    elif mode == "refused" and len(sys.argv) == 8:
        refused(cri, *sys.argv[4:8])
    elif mode == "bench" and len(sys.argv) >= 9:
        bench(cri, int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
