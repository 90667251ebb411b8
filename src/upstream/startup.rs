//! Where each of a client's startup parameters goes, so that every one takes effect or the
//! login fails clearly. A PostgreSQL takes them all in the startup packet. An RDS Proxy refuses
//! a connection whose startup packet holds anything but a few names (`options` included), so
//! for it the others, and each `-c name=value` / `--name=value` inside `options`, are applied
//! right after the login with `set_config(name, value, false)`, which reads a value exactly as a
//! startup parameter is read; in one round trip, before the client sees ReadyForQuery. A setting
//! the server refuses fails the login with the server's own error, as a direct connection would.

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::ConnectError;
use super::kind::UpstreamKind;
use crate::error::{PgError, sqlstate};
use crate::protocol::framing::set_parameter;
use crate::protocol::server::{ReadError, ServerReader, error_response};

/// An answer to the settings batch larger than this is not one.
const MAX_ANSWER: usize = 1 << 20;

/// The statement each setting is applied with; its parameters are the name and the value.
const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";

/// A client's startup parameters split for one kind of upstream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StartupPlan<'a> {
    /// Sent in the startup packet (user and database first).
    pub packet: Vec<(&'a str, &'a str)>,
    /// Applied after the login, in order.
    pub settings: Vec<(String, String)>,
}

/// Splits `parameters` (user and database included) for `kind`; `Err` when `options` holds
/// something that is not a setting and so cannot be applied after login.
pub fn plan<'a>(
    kind: UpstreamKind,
    parameters: &[(&'a str, &'a str)],
) -> Result<StartupPlan<'a>, PgError> {
    let mut plan = StartupPlan::default();
    let mut explicit = Vec::new();
    for &(name, value) in parameters {
        let packet_name = match name {
            "user" | "database" => Some(name),
            _ => kind.startup_name(name),
        };
        if let Some(packet_name) = packet_name {
            plan.packet.push((packet_name, value));
        } else if name == "options" {
            plan.settings.extend(settings_in_options(value)?);
        } else {
            explicit.push((name.to_owned(), value.to_owned()));
        }
    }
    // As PostgreSQL reads a startup packet: a parameter of its own beats the same name in
    // options, so it is applied after.
    plan.settings.extend(explicit);
    Ok(plan)
}

/// The settings in an `options` value: `-c name=value`, `-cname=value` and `--name=value`,
/// words split at unescaped white space with libpq's backslash escapes. Dashes in names become
/// underscores, as the server reads them.
pub fn settings_in_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let words = split_words(options);
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next().ok_or_else(|| not_a_setting("-c"))?
        } else if let Some(rest) = word.strip_prefix("--").or_else(|| word.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(not_a_setting(&word));
        };
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| not_a_setting(&assignment))?;
        if name.is_empty() {
            return Err(not_a_setting(&assignment));
        }
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

/// Words of a libpq `options` string: white space separates, a backslash takes the next
/// character as it is.
fn split_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn not_a_setting(word: &str) -> PgError {
    PgError::fatal(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "rds-iam-sidecar: the startup parameter options holds '{word}', which is not a \
             setting; RDS Proxy refuses command-line options, and only settings (-c name=value, \
             --name=value) can be applied after login"
        ),
    )
    .with_hint("remove it from PGOPTIONS / options, or set it with SET after connecting")
}

/// Applies `settings` on a freshly logged-in connection: one Parse, a Bind and Execute per
/// setting, one Sync. ParameterStatus answers update `parameters`; bytes read past the final
/// ReadyForQuery are returned.
pub async fn apply<S>(
    stream: &mut S,
    settings: &[(String, String)],
    parameters: &mut Vec<(String, String)>,
) -> Result<BytesMut, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    frontend::parse("", SET_CONFIG, [], &mut out)?;
    for (name, value) in settings {
        let values = [name.as_bytes(), value.as_bytes()];
        frontend::bind(
            "",
            "",
            [0],
            values,
            |value, buf| {
                buf.extend_from_slice(value);
                Ok(postgres_protocol::IsNull::No)
            },
            [0],
            &mut out,
        )
        .map_err(|_| ConnectError::Protocol("a setting could not be encoded".to_owned()))?;
        frontend::execute("", 0, &mut out)?;
    }
    frontend::sync(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    read_answers(stream, parameters).await
}

async fn read_answers<S: AsyncRead + Unpin>(
    stream: &mut S,
    parameters: &mut Vec<(String, String)>,
) -> Result<BytesMut, ConnectError> {
    let mut reader = ServerReader::new(MAX_ANSWER);
    let mut refused = None;
    loop {
        let message = reader.next(stream).await.map_err(read_error)?;
        match message {
            backend::Message::ErrorResponse(body) => {
                refused.get_or_insert(error_response(&body)?);
            }
            backend::Message::ParameterStatus(body) => {
                set_parameter(
                    parameters,
                    body.name()?.to_owned(),
                    body.value()?.to_owned(),
                );
            }
            backend::Message::ReadyForQuery(body) => {
                return match (refused, body.status()) {
                    (Some(error), _) => Err(ConnectError::Server(error)),
                    (None, b'I') => Ok(reader.into_rest()),
                    (None, status) => Err(ConnectError::Protocol(format!(
                        "transaction status '{}' after applying startup settings",
                        char::from(status)
                    ))),
                };
            }
            _ => {}
        }
    }
}

fn read_error(error: ReadError) -> ConnectError {
    match error {
        ReadError::TooLarge(..) => ConnectError::Protocol("settings answer too large".to_owned()),
        ReadError::Closed => ConnectError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection while applying startup settings",
        )),
        ReadError::Io(error) => ConnectError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn options_hold_settings_in_every_spelling() {
        let settings =
            settings_in_options(r"-c search_path=s1 -cstatement_timeout=1234 --lock-timeout=5s")
                .expect("settings");
        assert_eq!(
            settings,
            pairs(&[
                ("search_path", "s1"),
                ("statement_timeout", "1234"),
                ("lock_timeout", "5s"),
            ])
        );
        let escaped =
            settings_in_options(r"-c search_path=a,\ b -c application_name=x\\y").expect("escaped");
        assert_eq!(
            escaped,
            pairs(&[("search_path", "a, b"), ("application_name", r"x\y")])
        );
        assert_eq!(settings_in_options("  ").expect("empty"), vec![]);
    }

    #[test]
    fn options_that_are_not_settings_are_refused_by_name() {
        for (options, named) in [
            ("-d 5", "-d"),
            ("-c", "-c"),
            ("-c search_path", "search_path"),
        ] {
            let error = settings_in_options(options).expect_err(options);
            assert_eq!(error.code, "0A000");
            assert!(error.message.contains(&format!("'{named}'")), "{error:?}");
        }
    }

    #[test]
    fn rds_proxy_gets_only_its_parameters_in_the_packet() {
        let parameters = [
            ("user", "u"),
            ("database", "d"),
            ("application_name", "app"),
            ("search_path", "s1"),
            ("options", "-c statement_timeout=1234"),
        ];
        let proxy = plan(UpstreamKind::RdsProxy, &parameters).expect("plan");
        assert_eq!(
            proxy.packet,
            vec![
                ("user", "u"),
                ("database", "d"),
                ("application_name", "app")
            ]
        );
        // options first: a parameter of its own beats the same name inside options.
        assert_eq!(
            proxy.settings,
            pairs(&[("statement_timeout", "1234"), ("search_path", "s1")])
        );
        let postgres = plan(UpstreamKind::Postgres, &parameters).expect("plan");
        assert_eq!(postgres.packet, parameters.to_vec());
        assert!(postgres.settings.is_empty());
    }
}
