//! Checks 6 and 7: a token signed and a login with it (causes of a failure in
//! [`super::causes`]), then `select current_user, version()` and membership of `rds_iam`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::causes::login_causes;
use super::report::Checks;
use crate::iam::credentials::CredentialCache;
use crate::iam::token::sign_token;
use crate::protocol::server::{ServerReader, error_response};
use crate::stream::UpstreamStream;
use crate::upstream::{Connector, ServerConnection, UpstreamAuth, UpstreamSettings};

/// 6. A token signed and a login with it.
pub(super) async fn login(
    checks: &mut Checks,
    config: &UpstreamSettings,
    connector: &Connector,
    credentials: &Option<Arc<CredentialCache>>,
    user: &str,
    database: &str,
) -> Option<ServerConnection> {
    let token_note = match (&config.auth, credentials) {
        (UpstreamAuth::Iam { region, .. }, Some(cache)) => match cache.get().await {
            Ok(creds) => match sign_token(
                &creds,
                &config.endpoint.host,
                config.endpoint.port,
                user,
                region,
                SystemTime::now(),
            ) {
                Ok(token) => format!(
                    "token signed for {user}@{} ({} characters, valid 15 minutes)",
                    config.endpoint.dial_target(),
                    token.expose().len()
                ),
                Err(error) => {
                    checks.fail(
                        format!("signing a token failed: {error}"),
                        Vec::new(),
                        "check the credentials",
                    );
                    return None;
                }
            },
            Err(error) => {
                checks.fail(
                    error.to_string(),
                    Vec::new(),
                    "give the sidecar AWS credentials",
                );
                return None;
            }
        },
        _ => "password login".to_owned(),
    };
    let parameters = [("user", user), ("database", database)];
    match connector.connect(user, &parameters).await {
        Ok(server) => {
            checks.ok(format!("{token_note}; logged in as {user} to {database}"));
            Some(server)
        }
        Err(error) => {
            let (causes, fix) = login_causes(&error, config, user);
            checks.fail(format!("{token_note}; {error}"), causes, fix);
            None
        }
    }
}

/// 7. `select current_user, version()` and membership of rds_iam.
pub(super) async fn query(checks: &mut Checks, server: &mut ServerConnection) {
    let sql = "select current_user, version(), case when exists (select 1 from pg_roles where \
               rolname = 'rds_iam') then pg_has_role(current_user, 'rds_iam', 'member')::text \
               else 'no rds_iam role' end";
    match tokio::time::timeout(
        Duration::from_secs(10),
        simple_query(&mut server.stream, sql),
    )
    .await
    {
        Ok(Ok(row)) if row.len() == 3 => {
            let member = match row[2].as_str() {
                "true" => "member of rds_iam",
                "false" => "not a member of rds_iam (fine through RDS Proxy with a secret)",
                _ => "no rds_iam role on this server (not RDS)",
            };
            checks.ok(format!("current_user {}, {member}; {}", row[0], row[1]));
        }
        Ok(Ok(row)) => {
            checks.fail(
                format!("unexpected answer with {} columns", row.len()),
                Vec::new(),
                "report this",
            );
        }
        Ok(Err(error)) => {
            checks.fail(
                format!("the query failed: {error}"),
                vec!["the user may lack privileges to read pg_roles".to_owned()],
                "logins work; check the user's privileges",
            );
        }
        Err(_) => {
            checks.fail(
                "no answer to a query within 10 s",
                vec!["the server or proxy is overloaded".to_owned()],
                "retry; check the database's health",
            );
        }
    }
}

/// Runs one simple query and returns the first row's columns as text.
async fn simple_query(stream: &mut UpstreamStream, sql: &str) -> Result<Vec<String>, String> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut reader = ServerReader::new(1 << 20);
    let mut row = None;
    let mut error = None;
    loop {
        match reader.next(stream).await.map_err(|e| e.to_string())? {
            Message::DataRow(data) if row.is_none() => row = Some(row_values(&data)),
            Message::ErrorResponse(body) => {
                error = Some(error_response(&body).map_err(|e| e.to_string())?.message);
            }
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    match (error, row) {
        (Some(error), _) => Err(error),
        (None, Some(row)) => Ok(row),
        (None, None) => Err("no row".to_owned()),
    }
}

/// A DataRow's values as text (NULL as "NULL").
fn row_values(data: &postgres_protocol::message::backend::DataRowBody) -> Vec<String> {
    let buf = data.buffer();
    let mut ranges = data.ranges();
    let mut values = Vec::new();
    while let Ok(Some(range)) = fallible_iterator::FallibleIterator::next(&mut ranges) {
        values.push(
            range
                .map(|r| String::from_utf8_lossy(&buf[r]).into_owned())
                .unwrap_or_else(|| "NULL".to_owned()),
        );
    }
    values
}
