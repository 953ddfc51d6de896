use super::*;

fn registration() -> Registration {
    Registration {
        container_id: "c1".into(),
        namespace: "shop".into(),
        pod: "web-1".into(),
        host_ifname: "lxc1".into(),
        ips: vec!["10.0.0.1".parse().unwrap()],
        labels: None,
        named_ports: Vec::new(),
    }
}

fn refusal(r: Result<Request, Response>) -> (ErrorCode, String) {
    match r {
        Err(Response::Error { code, message }) => (code, message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[test]
fn request_round_trips_with_version() {
    let req = Request::Register(registration());
    let line = encode_request(&req).unwrap();
    assert_eq!(line.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["op"], "register");
    assert_eq!(v["version"], PROTOCOL_VERSION);
    assert!(v.get("min_version").is_none(), "{v}");
    assert_eq!(decode_request(&line).unwrap(), req);
}

#[test]
fn version_one_lines_still_decode() {
    // What a version-1 plugin sent: no version fields.
    let line = br#"{"op":"deregister","container_id":"c9"}"#;
    assert_eq!(
        decode_request(line).unwrap(),
        Request::Deregister {
            container_id: "c9".into()
        }
    );
    let full: RequestLine = serde_json::from_slice(line).unwrap();
    assert_eq!((full.version, full.min_version), (1, 0));
}

#[test]
fn unknown_fields_from_a_newer_client_are_ignored() {
    let line = br#"{"op":"register","version":7,"trace_id":"x","container_id":"c1",
        "namespace":"shop","pod":"web-1","host_ifname":"lxc1","ips":["10.0.0.1"],
        "bandwidth":{"egress":100},
        "named_ports":[{"name":"http","port":80,"protocol":"TCP","app_protocol":"h2"}]}"#;
    let mut want = registration();
    want.named_ports = vec![NamedPort {
        name: "http".into(),
        port: 80,
        protocol: "TCP".into(),
    }];
    assert_eq!(decode_request(line).unwrap(), Request::Register(want));
}

#[test]
fn a_too_new_required_version_is_refused_clearly() {
    let line = format!(
        r#"{{"op":"status","version":{v},"min_version":{v}}}"#,
        v = PROTOCOL_VERSION + 1
    );
    let (code, message) = refusal(decode_request(line.as_bytes()));
    assert_eq!(code, ErrorCode::UnsupportedVersion);
    assert!(
        message.contains(&format!("version {}", PROTOCOL_VERSION + 1))
            && message.contains(&format!("speaks version {PROTOCOL_VERSION}")),
        "{message}"
    );
    // Exactly this version is served.
    let line = format!(r#"{{"op":"status","min_version":{PROTOCOL_VERSION}}}"#);
    assert_eq!(decode_request(line.as_bytes()).unwrap(), Request::Status);
}

#[test]
fn malformed_lines_are_bad_requests() {
    for (line, needle) in [
        (&b"{not json"[..], "invalid request"),
        (br#"{"op":"launch"}"#, "launch"),
        (br#"{"op":"register","container_id":"x"}"#, "missing field"),
    ] {
        let (code, message) = refusal(decode_request(line));
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[test]
fn error_codes_are_snake_case_and_unknown_codes_read_as_unknown() {
    let codes = [
        ErrorCode::BadRequest,
        ErrorCode::Busy,
        ErrorCode::NotReady,
        ErrorCode::NoSuchInterface,
        ErrorCode::Conflict,
        ErrorCode::Datapath,
        ErrorCode::State,
        ErrorCode::UnsupportedVersion,
    ];
    for code in codes {
        let json = serde_json::to_value(code).unwrap();
        assert_eq!(json, code.as_str());
        assert_eq!(serde_json::from_value::<ErrorCode>(json).unwrap(), code);
    }
    let r: Response =
        serde_json::from_str(r#"{"result":"error","code":"quota_exceeded","message":"m"}"#)
            .unwrap();
    assert_eq!(r, Response::error(ErrorCode::Unknown, "m"));
}

#[test]
fn an_older_client_reads_a_newer_status() {
    let r: Response = serde_json::from_str(
        r#"{"result":"status","api_version":9,"endpoints":3,"ready":false,
            "reason":"maps dirty","dirty_since":"x"}"#,
    )
    .unwrap();
    assert_eq!(
        r,
        Response::Status {
            api_version: 9,
            endpoints: 3,
            ready: false,
            reason: Some("maps dirty".into()),
            warnings: Vec::new(),
            maps: Vec::new(),
            verdict_log: None,
        }
    );
    // And a version-1 status (no reason) still reads.
    let r: Response =
        serde_json::from_str(r#"{"result":"status","api_version":1,"endpoints":0,"ready":true}"#)
            .unwrap();
    assert!(matches!(r, Response::Status { reason: None, .. }));
}

#[test]
fn client_reports_missing_socket() {
    let err = Client::connect(std::path::Path::new("/nonexistent/palisade.sock")).unwrap_err();
    assert!(err.is_unreachable());
    assert!(
        err.to_string().contains("/nonexistent/palisade.sock"),
        "{err}"
    );
}
