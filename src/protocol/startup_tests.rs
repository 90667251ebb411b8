//! Tests of the first packets' decoding: each kind, the length and layout checks, the
//! parameters' order, repeated names, invalid UTF-8 and equality.

use super::*;

async fn parse(bytes: &[u8]) -> Result<InitialPacket, StartupError> {
    let mut reader = bytes;
    read_initial_packet(&mut reader).await
}

fn startup_bytes(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3];
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[tokio::test]
async fn decodes_each_kind() {
    assert_eq!(
        parse(&[0, 0, 0, 8, 4, 210, 22, 47]).await.expect("ssl"),
        InitialPacket::SslRequest
    );
    assert_eq!(
        parse(&[0, 0, 0, 8, 4, 210, 22, 48]).await.expect("gss"),
        InitialPacket::GssEncRequest
    );
    assert_eq!(
        parse(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 1, 2, 3, 4])
            .await
            .expect("cancel"),
        InitialPacket::Cancel {
            pid: 7,
            secret: vec![1, 2, 3, 4]
        }
    );
    let InitialPacket::Startup(startup) =
        parse(&startup_bytes(0, &[("user", "app"), ("database", "db")]))
            .await
            .expect("startup")
    else {
        panic!("not a startup");
    };
    assert_eq!(startup.get("user"), Some("app"));
    assert_eq!(startup.get("database"), Some("db"));
}

#[tokio::test]
async fn rejects_garbage() {
    assert!(matches!(
        parse(&[0, 0, 0, 2]).await,
        Err(StartupError::BadLength(2))
    ));
    assert!(matches!(
        parse(&[0, 1, 0, 0]).await,
        Err(StartupError::BadLength(_))
    ));
    assert!(matches!(parse(&[]).await, Err(StartupError::Closed)));
    assert!(matches!(
        parse(&[0, 0, 0, 8, 0, 2, 0, 0]).await,
        Err(StartupError::UnsupportedProtocol { major: 2, .. })
    ));
}

#[tokio::test]
async fn rejects_a_parameter_list_without_its_terminators() {
    let whole = startup_bytes(0, &[("user", "app")]);
    for cut in [1, 2] {
        // The final NUL gone, then the value's as well (lengths adjusted).
        let mut bytes = whole[..whole.len() - cut].to_vec();
        let length = (bytes.len() as u32).to_be_bytes();
        bytes[..4].copy_from_slice(&length);
        let error = parse(&bytes).await.expect_err("invalid layout");
        assert!(
            error.to_string().contains("expected terminator"),
            "{cut}: {error}"
        );
    }
    let mut name_only = startup_bytes(0, &[]);
    name_only.truncate(name_only.len() - 1);
    name_only.extend_from_slice(b"user\0\0");
    let length = (name_only.len() as u32).to_be_bytes();
    name_only[..4].copy_from_slice(&length);
    assert!(parse(&name_only).await.is_err(), "a name without a value");
    let empty = startup_bytes(0, &[]);
    assert!(parse(&empty).await.is_ok(), "no parameters at all");
}

/// Sorted by name; a repeated name keeps the value sent last; invalid UTF-8 is replaced.
#[tokio::test]
async fn parameters_are_sorted_and_the_last_of_a_name_wins() {
    let bytes = startup_bytes(
        0,
        &[
            ("user", "app"),
            ("application_name", "one"),
            ("database", "db"),
            ("application_name", "two"),
        ],
    );
    let InitialPacket::Startup(startup) = parse(&bytes).await.expect("startup") else {
        panic!("not a startup");
    };
    let names: Vec<_> = startup.parameters().collect();
    assert_eq!(
        names,
        [
            ("application_name", "two"),
            ("database", "db"),
            ("user", "app")
        ]
    );
    let mut bytes = startup_bytes(0, &[("user", "ab")]);
    let at = bytes.len() - 3;
    bytes[at] = 0xff;
    let InitialPacket::Startup(startup) = parse(&bytes).await.expect("startup") else {
        panic!("not a startup");
    };
    assert_eq!(startup.get("user"), Some("a\u{fffd}"));
    // Equal when they ask for the same, however the packet spelled it.
    let parse_startup = |params: &[(&str, &str)]| {
        let bytes = startup_bytes(0, params);
        async move { parse(&bytes).await.expect("startup") }
    };
    assert_eq!(
        parse_startup(&[("user", "app"), ("database", "x"), ("database", "db")]).await,
        parse_startup(&[("database", "db"), ("user", "app")]).await
    );
    assert_ne!(
        parse_startup(&[("user", "app")]).await,
        parse_startup(&[("user", "ap")]).await
    );
}
