//! A Kubernetes client for tests and benchmarks whose API server runs in a node's network
//! namespace (`ApiServer::start_in`), where the agent (`run --netns`) reaches it.

use std::future::Future;
use std::path::Path;

use kube::Client;
use palisade_testkit::node::Node;
use serde_json::Value;

/// Runs `f` with a client of the API server of `kubeconfig`, on a thread inside the node's
/// network namespace with a single-threaded runtime, so every socket the client opens is
/// opened there.
pub fn api<T, Fut>(node: &Node, kubeconfig: &Path, f: impl FnOnce(Client) -> Fut + Send) -> T
where
    T: Send,
    Fut: Future<Output = T>,
{
    let kubeconfig = kubeconfig.to_path_buf();
    node.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            f(Client::try_from(cfg).unwrap()).await
        })
    })
    .unwrap()
}

/// A typed object from JSON.
pub fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}
