#!/usr/bin/python3
"""A small CRI v1 client for cni/tests/cri.rs: the calls a kubelet makes to set up and tear
down pod networking, sent to containerd's CRI plugin over its unix socket.

Debian's python3-grpcio and python3-protobuf carry the gRPC transport and the messages;
protoc (protobuf-compiler) turns tests/cri/api.proto, a field-exact subset of the upstream
CRI api.proto, into api_pb2.py in $PALISADE_CRI_GEN (a directory the test owns; default
$TMPDIR/palisade-cri-gen). There is no service stub: each method is called by its full
gRPC name.

Usage: cri.py SOCKET, then one JSON request per line on stdin, one JSON answer per line on
stdout ({"error": ...} on failure). Requests:
  {"op": "version"}
  {"op": "run_pod", "name", "namespace", "uid", "annotations"?}          -> {"id"}
  {"op": "pod_status", "id"}                          -> {"state", "ip", "netns"}
  {"op": "create_start", "pod", "name", "image", "command", "args"?}     -> {"id"}
  {"op": "exec", "container", "cmd", "timeout"}      -> {"exit_code", "stdout", "stderr"}
  {"op": "stop_pod", "id"} / {"op": "remove_pod", "id"}
And without a socket: cri.py image ROOTFS OUT.tar NAME  (an OCI archive for `ctr import`).
"""

import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 60


def load_messages():
    gen = os.environ.get("PALISADE_CRI_GEN") or os.path.join(
        tempfile.gettempdir(), "palisade-cri-gen"
    )
    os.makedirs(gen, exist_ok=True)
    proto = os.path.join(HERE, "api.proto")
    out = os.path.join(gen, "api_pb2.py")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(proto):
        subprocess.run(
            ["protoc", "-I", HERE, "--python_out", gen, proto], check=True
        )
    sys.path.insert(0, gen)
    import api_pb2  # noqa: E402  (generated above)

    return api_pb2


class Client:
    def __init__(self, socket):
        import grpc

        self.grpc = grpc
        self.pb = load_messages()
        self.channel = grpc.insecure_channel("unix://" + socket)
        self.sandbox_configs = {}

    def call(self, method, request, response_type):
        rpc = self.channel.unary_unary(
            "/runtime.v1.RuntimeService/" + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return rpc(request, timeout=TIMEOUT)

    def version(self, _req):
        pb = self.pb
        r = self.call("Version", pb.VersionRequest(version="v1"), pb.VersionResponse)
        return {
            "runtime_name": r.runtime_name,
            "runtime_version": r.runtime_version,
            "runtime_api_version": r.runtime_api_version,
        }

    def run_pod(self, req):
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=req["name"], namespace=req["namespace"], uid=req["uid"], attempt=0
            ),
            hostname=req["name"],
            labels=req.get("labels", {}),
            annotations=req.get("annotations", {}),
        )
        r = self.call(
            "RunPodSandbox",
            pb.RunPodSandboxRequest(config=config),
            pb.RunPodSandboxResponse,
        )
        self.sandbox_configs[r.pod_sandbox_id] = config
        return {"id": r.pod_sandbox_id}

    def pod_status(self, req):
        pb = self.pb
        r = self.call(
            "PodSandboxStatus",
            pb.PodSandboxStatusRequest(pod_sandbox_id=req["id"], verbose=True),
            pb.PodSandboxStatusResponse,
        )
        netns = ""
        info = json.loads(r.info.get("info", "{}") or "{}")
        for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                netns = ns.get("path", "")
        return {
            "state": pb.PodSandboxState.Name(r.status.state),
            "ip": r.status.network.ip,
            "netns": netns,
        }

    def create_start(self, req):
        pb = self.pb
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=req["name"], attempt=0),
            image=pb.ImageSpec(image=req["image"]),
            command=req["command"],
            args=req.get("args", []),
        )
        r = self.call(
            "CreateContainer",
            pb.CreateContainerRequest(
                pod_sandbox_id=req["pod"],
                config=config,
                sandbox_config=self.sandbox_configs[req["pod"]],
            ),
            pb.CreateContainerResponse,
        )
        self.call(
            "StartContainer",
            pb.StartContainerRequest(container_id=r.container_id),
            pb.StartContainerResponse,
        )
        return {"id": r.container_id}

    def exec(self, req):
        pb = self.pb
        r = self.call(
            "ExecSync",
            pb.ExecSyncRequest(
                container_id=req["container"], cmd=req["cmd"], timeout=req["timeout"]
            ),
            pb.ExecSyncResponse,
        )
        return {
            "exit_code": r.exit_code,
            "stdout": r.stdout.decode("utf-8", "replace"),
            "stderr": r.stderr.decode("utf-8", "replace"),
        }

    def stop_pod(self, req):
        pb = self.pb
        self.call(
            "StopPodSandbox",
            pb.StopPodSandboxRequest(pod_sandbox_id=req["id"]),
            pb.StopPodSandboxResponse,
        )
        return {}

    def remove_pod(self, req):
        pb = self.pb
        self.call(
            "RemovePodSandbox",
            pb.RemovePodSandboxRequest(pod_sandbox_id=req["id"]),
            pb.RemovePodSandboxResponse,
        )
        self.sandbox_configs.pop(req["id"], None)
        return {}


def serve(socket):
    client = Client(socket)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op.startswith("_") or op in ("call",) or not hasattr(client, op):
                raise ValueError("unknown op " + op)
            answer = getattr(client, op)(req)
        except client.grpc.RpcError as e:
            answer = {"error": "%s: %s" % (e.code().name, e.details())}
        except Exception as e:  # noqa: BLE001  (every failure goes back to the test)
            answer = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def oci_archive(rootfs, out, name):
    """Writes an OCI image-layout archive of ROOTFS as one uncompressed layer, named NAME
    through the io.containerd.image.name annotation that `ctr images import` reads."""

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return digest, data

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        for entry in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, entry), arcname=entry)
    layer_digest, layer_data = blob(layer.getvalue())
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sleep", "2147483647"],
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_data = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_data),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer_data),
            }
        ],
    }
    manifest_digest, manifest_data = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_data),
                "annotations": {"io.containerd.image.name": name},
                "platform": {"architecture": arch, "os": "linux"},
            }
        ],
    }
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index).encode()),
    ] + [
        ("blobs/sha256/" + d.split(":", 1)[1], data)
        for d, data in [
            (layer_digest, layer_data),
            (config_digest, config_data),
            (manifest_digest, manifest_data),
        ]
    ]
    with tarfile.open(out, mode="w") as t:
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "image":
        oci_archive(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 2:
        serve(sys.argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
