//! The agent's loops: the API server, the source watch, the reconcile task (async, waiting
//! only) and the `palisade-events` thread (verdict log, lost events, conntrack GC).

use super::*;

impl Daemon {
    /// Writes pending events to the verdict log. Events are read from the ring without
    /// the state lock, rendered under it (the resolver borrows the engine), and written
    /// after it is released, so a slow disk never holds up a registration.
    fn drain_events(
        &self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        logger: &mut FlowLogger,
    ) -> usize {
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = abi::VerdictEvent::from_bytes(&item) {
                events.push(ev);
            }
        }
        self.write_rendered(logger, &events, |logger, e, resolver| {
            logger.render(e, resolver)
        })
    }

    /// Writes the L7 records the proxy queued, like the datapath's events.
    fn drain_l7(
        &self,
        records: &mut tokio::sync::mpsc::Receiver<crate::events::L7Event>,
        logger: &mut FlowLogger,
    ) -> usize {
        let mut events = Vec::new();
        while let Ok(ev) = records.try_recv() {
            events.push(ev);
        }
        // One resolver per batch: the memo of its endpoints and rules lives as long.
        let memo = std::cell::RefCell::new(crate::events::L7Memo::default());
        self.write_rendered(logger, &events, |logger, e, resolver| {
            vec![logger.render_l7_memo(e, resolver, &mut memo.borrow_mut())]
        })
    }

    /// Renders `events` under the state lock and writes the lines after it is released.
    fn write_rendered<E>(
        &self,
        logger: &mut FlowLogger,
        events: &[E],
        render: impl Fn(&mut FlowLogger, &E, &EngineResolver<'_>) -> Vec<String>,
    ) -> usize {
        if events.is_empty() {
            return 0;
        }
        let lines: Vec<String> = {
            let st = self.lock();
            // The resolver indexes every endpoint: built only when there is an event.
            let resolver = EngineResolver::new(&st.engine)
                .with_interfaces(st.ifnames.clone())
                .with_services(st.services.clone());
            events
                .iter()
                .flat_map(|e| render(logger, e, &resolver))
                .collect()
        };
        let n = lines.len();
        for line in lines {
            if let Err(err) = logger.write(line) {
                warn!(error = err.to_string(), "verdict log write failed");
            }
        }
        n
    }

    /// Starts the L7 proxy (docs/l7.md): routing, the listener, the listener into the
    /// datapath, then `pal_proxy` ready. Any step failing leaves the proxy not ready
    /// (redirected flows drop), says why in `status`, and the agent keeps enforcing L3/L4.
    fn start_proxy(
        &self,
        shared: Arc<crate::proxy::ProxyShared>,
        port: u16,
        records: tokio::sync::mpsc::Sender<crate::events::L7Event>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let started = (|| -> Result<tokio::net::TcpListener, String> {
            crate::proxy::sockets::install_routing()?;
            let listener = crate::proxy::sockets::listener(port)
                .map_err(|e| format!("cannot listen on [::]:{port}: {e}"))?;
            self.lock()
                .dp
                .attach_proxy_listener(&listener)
                .map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| format!("listener: {e}"))?;
            {
                let mut st = self.lock();
                let flags = st.dp.proxy_state().flags | abi::PROXY_F_READY;
                st.dp
                    .set_proxy(&abi::ProxyState {
                        flags,
                        port_be: port.to_be(),
                        pad: 0,
                    })
                    .map_err(|e| e.to_string())?;
            }
            Ok(listener)
        })();
        let listener = match started {
            Ok(l) => l,
            Err(e) => {
                error!(
                    error = e.as_str(),
                    "L7 proxy not started: flows that HTTP rules redirect are dropped (DROP_PROXY_UNAVAILABLE)"
                );
                self.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .l7_proxy = Some(e);
                return None;
            }
        };
        info!(
            l7_proxy.port = port,
            "L7 proxy ready: HTTP rules are enforced"
        );
        let config = Arc::new(palisade_l7proxy::proxy::ProxyConfig::default());
        Some(tokio::spawn(crate::proxy::run(
            listener, shared, config, records, stop,
        )))
    }

    /// Packets of one counter over both directions.
    fn counter_total(&self, code: u32) -> u64 {
        let st = self.lock();
        [abi::DIRECTION_INGRESS, abi::DIRECTION_EGRESS]
            .iter()
            .filter_map(|d| st.dp.counter(*d, code).ok())
            .map(|c| c.packets)
            .sum()
    }

    /// The `palisade-events` thread: waits for the ring buffer (or a 200 ms tick, which
    /// also covers a missed wakeup), writes the verdict log, reports lost events, flushes,
    /// and runs conntrack GC every `gc_every`. Ends after a last drain once `stop` is set.
    fn events_loop(
        &self,
        mut ring: aya::maps::RingBuf<aya::maps::MapData>,
        mut records: tokio::sync::mpsc::Receiver<crate::events::L7Event>,
        mut logger: FlowLogger,
        gc_every: Duration,
        checkpoint_every: Duration,
        stop: &AtomicBool,
    ) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        const TICK: Duration = Duration::from_millis(200);
        let mut lost_seen = 0u64;
        let mut l7_lost_seen = 0u64;
        let mut last_tick = Instant::now();
        let mut last_gc = Instant::now();
        let mut last_checkpoint = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if !stopping {
                let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
                // An error (EINTR) only shortens the wait; the tick logic below still runs.
                let _ = poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16));
            }
            self.drain_events(&mut ring, &mut logger);
            self.drain_l7(&mut records, &mut logger);
            if let Some(p) = &self.proxy {
                let total = p.records_lost.load(Ordering::Relaxed);
                if total > l7_lost_seen {
                    if let Err(err) = logger.note_lost(total - l7_lost_seen) {
                        warn!(error = err.to_string(), "verdict log write failed");
                    }
                    self.metrics
                        .verdict_log_lost
                        .fetch_add(total - l7_lost_seen, Ordering::Relaxed);
                    l7_lost_seen = total;
                }
            }
            if stopping || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let lost = self.counter_total(abi::COUNTER_EVENTS_LOST);
                if lost != lost_seen {
                    if let Ok(n) = logger.observe_ring_lost(lost) {
                        self.metrics
                            .verdict_log_lost
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    lost_seen = lost;
                }
                // Checkpoints when something is unsigned: periodically and at shutdown.
                if logger.unsigned() > 0
                    && (stopping || last_checkpoint.elapsed() >= checkpoint_every)
                {
                    last_checkpoint = Instant::now();
                    if let Err(err) = logger.checkpoint() {
                        warn!(error = err.to_string(), "verdict log checkpoint failed");
                    }
                    self.set_verdict_log_status(&logger);
                }
                let _ = logger.flush();
            }
            if !stopping && last_gc.elapsed() >= gc_every {
                last_gc = Instant::now();
                let n = self.lock().dp.ct_gc().unwrap_or(0);
                if n > 0 {
                    info!(conntrack.expired = n, "conntrack gc");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes the CNI conflist once the agent is ready, retrying with backoff while it is
    /// not (maps being reconciled) or the write fails; until then no pod starts on the
    /// node. Never removes it: pods keep working across an agent restart.
    async fn write_cni_conflist(
        &self,
        cni: &crate::cniconf::CniConfig,
        socket: &Path,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(RECONCILE_FIRST, RECONCILE_MAX);
        loop {
            if self.health().ready() {
                let mut c = cni.clone();
                // The range the cluster assigned this node wins over the configured one
                // (two nodes must never hand out the same addresses).
                if let Some(cidr) = self.source.node_pod_cidr()
                    && cidr != c.subnet
                {
                    info!(
                        cni.subnet = cidr.as_str(),
                        configured = c.subnet.as_str(),
                        "pod CIDR from this node's Node object"
                    );
                    c.subnet = cidr;
                }
                // The write syncs to disk: off the runtime's worker threads.
                let s = socket.to_path_buf();
                let written = match c.validate(&s) {
                    // A range from the API the plugin would refuse: no conflist (fail closed).
                    Err(e) => Err(format!("{e} (from this node's Node object)")),
                    Ok(()) => tokio::task::spawn_blocking(move || c.write(&s))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                };
                self.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .cni = written.as_ref().err().cloned();
                match written {
                    Ok(path) => {
                        info!(
                            cni.conflist = path.display().to_string(),
                            "CNI network configuration written: the runtime may start pods"
                        );
                        return;
                    }
                    Err(e) => error!(
                        error = e,
                        "CNI network configuration not written; no pod starts on this node until it is (retrying)"
                    ),
                }
            }
            tokio::select! {
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Runs until SIGINT/SIGTERM or `shutdown` fires: the API server, the source watch,
    /// the event reader, conntrack GC. On exit nothing is detached: pinned links and maps
    /// keep enforcing until the next enforcer adopts them.
    pub async fn run(
        self: Arc<Self>,
        mut source_rx: tokio::sync::mpsc::Receiver<SourceEvent>,
        config: &Config,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        let server = Server::bind(&config.socket, ServerLimits::from_config(config))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ring = self.lock().dp.take_events()?;
        let writer = RotatingWriter::from_config(config)?;
        let key = crate::events::load_or_generate(&self.verdict_log_key_path(config))
            .map_err(crate::events::FlowLogError::from)?;
        let mut logger =
            FlowLogger::new(writer, &config.node_name, BootClock::from_system()?)?.with_key(key);
        // A start is a checkpoint: it signs whatever the previous run left unsigned.
        logger.checkpoint()?;
        logger.flush()?;
        self.set_verdict_log_status(&logger);
        let checkpoint_every = Duration::from_secs(config.verdict_log_checkpoint_secs);

        let (l7_tx, l7_rx) = tokio::sync::mpsc::channel(crate::proxy::RECORD_QUEUE);
        let events_stop = Arc::new(AtomicBool::new(false));
        let events = {
            let daemon = self.clone();
            let stop = events_stop.clone();
            let gc_every = config.ct_gc_interval();
            std::thread::Builder::new()
                .name("palisade-events".into())
                .spawn(move || {
                    daemon.events_loop(ring, l7_rx, logger, gc_every, checkpoint_every, &stop)
                })
                .map_err(|source| DaemonError::Thread {
                    name: "palisade-events",
                    source,
                })?
        };

        let api_stop = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let api = tokio::spawn(server.serve(Arc::new(Registry(self.clone())), api_stop));
        let proxy_task = match (&self.proxy, config.l7_proxy_port) {
            (Some(shared), Some(port)) => {
                self.start_proxy(shared.clone(), port, l7_tx, stop_rx.clone())
            }
            _ => None,
        };
        // Only now (datapath loaded, first compile in the maps, the API listening) may the
        // runtime start pods here: the CNI conflist is written (docs/deploy.md).
        let cni_task = config.cni.clone().map(|cni| {
            let d = self.clone();
            let socket = config.socket.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move { d.write_cni_conflist(&cni, &socket, &mut stop).await })
        });
        let metrics_task = config.metrics_address.map(|addr| {
            let d = self.clone();
            let health: Arc<dyn Fn() -> Health + Send + Sync> = Arc::new(move || d.health());
            let mut rx = stop_rx.clone();
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let serve =
                crate::metrics::serve(addr, config.pin_dir(), health, self.metrics.clone(), stop);
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    error!(
                        error = e.to_string(),
                        metrics.address = addr.to_string(),
                        "metrics endpoint failed; enforcement is not affected"
                    );
                }
            })
        });

        let src_daemon = self.clone();
        let mut src_stop = stop_rx.clone();
        let source_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The watch guard is dropped inside, before any branch awaits.
                    () = async { let _ = src_stop.wait_for(|s| *s).await; } => break,
                    ev = source_rx.recv() => match ev {
                        Some(SourceEvent::Changes(c)) => {
                            let d = src_daemon.clone();
                            let applied = tokio::task::spawn_blocking(move || d.apply_source(c)).await;
                            match applied {
                                Ok(Ok(())) => {}
                                // A failed map update is logged by `sync` with what it leaves;
                                // this is the model or the engine refusing the batch, in which
                                // case nothing was written and the previous maps stay.
                                Ok(Err(DaemonError::Sync(_))) => {}
                                Ok(Err(e)) => error!(
                                    error = e.to_string(),
                                    "the source's changes were not applied; the previous maps stay"
                                ),
                                Err(e) => error!(error = e.to_string(), "source apply task failed"),
                            }
                        }
                        Some(SourceEvent::Error(e)) => warn!(
                            error = e.as_str(),
                            "policy source unreadable; enforcement continues on the last good policy"
                        ),
                        None => break,
                    }
                }
            }
        });

        let rec_daemon = self.clone();
        let mut rec_stop = stop_rx.clone();
        let reconcile_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = async { let _ = rec_stop.wait_for(|s| *s).await; } => break,
                    () = rec_daemon.reconcile_wake.notified() => {}
                }
                let mut backoff = Backoff::new(RECONCILE_FIRST, RECONCILE_MAX);
                while rec_daemon.health().dirty {
                    tokio::select! {
                        () = async { let _ = rec_stop.wait_for(|s| *s).await; } => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    let d = rec_daemon.clone();
                    // Failures are recorded (and logged) by `sync`.
                    let _ = tokio::task::spawn_blocking(move || d.reconcile_blocking()).await;
                }
            }
        });

        shutdown.await;
        let _ = stop_tx.send(true);
        if let Some(t) = proxy_task {
            // Redirected flows drop with their reason from here on, rather than meeting a
            // closed listener.
            let _ = self.lock().dp.set_proxy(&abi::ProxyState::default());
            let _ = t.await;
        }
        let _ = reconcile_task.await;
        events_stop.store(true, Ordering::Release);
        let _ = source_task.await;
        if let Some(t) = cni_task {
            let _ = t.await;
        }
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        match api.await {
            Ok(r) => r?,
            Err(e) => error!(error = e.to_string(), "api task failed"),
        }
        if tokio::task::spawn_blocking(move || events.join())
            .await
            .map_or(true, |r| r.is_err())
        {
            error!("the events thread panicked; the verdict log may miss its last lines");
        }
        info!("stopped; pinned programs and maps keep enforcing");
        Ok(())
    }
}
