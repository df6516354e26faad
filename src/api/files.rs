//! `/v1/files`: uploads (streamed into the blob store), the user's listing, metadata,
//! renaming, soft deletion and downloads.
//!
//! A download is authorized either by a token and `X-User-Id`, or by a signed link
//! (`?expires=&signature=`) with no token at all. It is streamed in constant memory with
//! `Content-Length`, `ETag` (the sha256), `If-None-Match`, single `Range` requests, a safe
//! `Content-Disposition` and `X-Content-Type-Options: nosniff`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use headers::{AcceptRanges, ContentLength, ContentRange, ETag, HeaderMapExt, IfNoneMatch, Range};
use serde::Deserialize;
use tokio_util::io::StreamReader;
use utoipa::{IntoParams, ToSchema};

use super::auth::{self, UserCaller};
use super::download::{self, RangeRequest};
use super::dto::{File, FileList, RenameFile};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::runs::json_rejection;
use super::signing::LinkError;
use super::{AppState, unix_now};
use crate::ids::FileId;
use crate::supervisor::FileRecord;
use crate::supervisor::{FileListing, Owner, StoredUpload, UploadMeta};

/// The multipart form of an upload (for the OpenAPI document).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only its schema is used; the form is read field by field.
struct UploadForm {
    /// The file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// The chat it belongs to.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    chat_id: String,
    /// The message it belongs to: with `chat_id` the upload binds it like a run; without,
    /// it must be an existing message of the user.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    message_id: String,
    /// Without a chat, when a live file of the user's own workspace has the name:
    /// `rename` takes `name (1).ext`, `replace` deletes the old file; without it, 409
    /// `name_taken`.
    #[serde(default)]
    #[schema(pattern = "^(rename|replace)$")]
    on_conflict: String,
}

/// Upload a file.
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "files",
    security(("bearer" = [])),
    params(("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = File),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "The message belongs to someone else", body = ErrorBody),
        (status = 409, description = "The name is taken in the user's own workspace", body = ErrorBody),
        (status = 413, description = "Over the upload limit (`too_large`) or the user's or tenant's stored quota (`quota_exceeded`); nothing is stored", body = ErrorBody),
        (status = 415, description = "The name's extension is not in `uploads.allowed_extensions`", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn upload_file(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    form: Multipart,
) -> ApiResult<(StatusCode, Json<File>)> {
    let (meta, staged) = receive_form(&state, &owner, form).await?;
    // Recording runs in a task of its own: once the bytes are stored, a client that goes away
    // (hyper then drops this handler) must not cut the recording in half and leave a blob
    // without its row. The bytes are handed over with no await in between.
    let stored = staged
        .hand_over()
        .ok_or_else(|| ApiError::internal(&"an upload's stored bytes were handed over twice"))?;
    let supervisor = state.supervisor.clone();
    let file = tokio::spawn(async move { supervisor.register_upload(&owner, meta, stored).await })
        .await
        .map_err(|join_error| ApiError::internal(&join_error))??;
    metrics::counter!("codebox_uploaded_bytes_total")
        .increment(u64::try_from(file.size).unwrap_or(0));
    Ok((StatusCode::CREATED, Json(state.file_dto(&file))))
}

/// Reads the upload form and streams its file into the store (staging it in the back end
/// until it is complete). Whatever is refused or broken on the way leaves no bytes behind.
async fn receive_form(
    state: &AppState,
    owner: &Owner,
    mut form: Multipart,
) -> ApiResult<(UploadMeta, Staged)> {
    let supervisor = &state.supervisor;
    let mut meta = UploadMeta::default();
    let mut staged: Option<Staged> = None;
    let outcome: ApiResult<()> = async {
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|error| ApiError::from_body_error("form", &error))?
        {
            match field.name() {
                Some("file") if staged.is_none() => {
                    meta.name = field.file_name().unwrap_or("upload").to_owned();
                    // A type that is refused is refused before a byte of it is stored.
                    supervisor.check_upload_name(&meta.name)?;
                    let reader = StreamReader::new(field.map_err(std::io::Error::other));
                    let upload = supervisor.store_upload(owner, reader).await;
                    let stored = upload.map_err(|error| match form_failure(&error) {
                        Some(failure) => ApiError::from_body_error("form", failure),
                        None => ApiError::from(error),
                    })?;
                    staged = Some(Staged {
                        supervisor: supervisor.clone(),
                        stored: Some(stored),
                    });
                }
                Some("file") => return Err(ApiError::invalid("only one file per upload")),
                Some("chat_id") => meta.chat_id = Some(text(field).await?),
                Some("message_id") => meta.message_id = Some(text(field).await?),
                Some("on_conflict") => meta.on_conflict = Some(text(field).await?),
                Some(other) => {
                    return Err(ApiError::invalid(format!("unknown form field {other:?}")));
                }
                None => return Err(ApiError::invalid("a form field has no name")),
            }
        }
        Ok(())
    }
    .await;
    match (outcome, staged) {
        (Ok(()), Some(staged)) => Ok((meta, staged)),
        (Ok(()), None) => Err(ApiError::invalid("the form has no file field")),
        (Err(error), staged) => {
            if let Some(staged) = staged {
                // Nothing half-stored remains of a refused upload.
                staged.discard().await;
            }
            Err(error.closing_connection())
        }
    }
}

/// The stored bytes of an upload that is not recorded yet. Dropped before it is handed over
/// (the client went away mid-form and hyper dropped the handler), it deletes them in the
/// background, so that no unrecorded blob remains.
struct Staged {
    supervisor: std::sync::Arc<crate::supervisor::Supervisor>,
    stored: Option<StoredUpload>,
}

impl Staged {
    /// The bytes, now the caller's to record or delete. `stored` is only taken here and in
    /// `discard`, which both consume `self`, so this is always `Some`.
    fn hand_over(mut self) -> Option<StoredUpload> {
        self.stored.take()
    }

    /// Deletes the bytes now.
    async fn discard(mut self) {
        if let Some(stored) = self.stored.take() {
            self.supervisor.discard_upload(stored).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(stored) = self.stored.take() else {
            return;
        };
        let supervisor = self.supervisor.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { supervisor.discard_upload(stored).await });
        }
    }
}

/// The form's own failure behind an error of storing its file: the client's broken, too large
/// or too slow body, which is the client's error and not the store's.
fn form_failure(error: &crate::supervisor::Error) -> Option<&(dyn std::error::Error + 'static)> {
    let inner = error.source_read_failure()?.get_ref()?;
    inner
        .is::<axum::extract::multipart::MultipartError>()
        .then_some(inner as &(dyn std::error::Error + 'static))
}

/// The longest text field an upload form may carry (ids are at most 128 characters).
pub(super) const MAX_FORM_TEXT_BYTES: usize = 1024;

/// Reads a text field of the form, refusing it as soon as it passes the cap: the upload route
/// has no body limit, so nothing else stops a huge field from filling memory.
async fn text(mut field: axum::extract::multipart::Field<'_>) -> ApiResult<String> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|error| ApiError::from_body_error("form field", &error))?
    {
        if bytes.len() + chunk.len() > MAX_FORM_TEXT_BYTES {
            return Err(ApiError::invalid(format!(
                "form field {name} is longer than {MAX_FORM_TEXT_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::invalid(format!("form field {name} is not UTF-8")))
}

/// The query of `GET /v1/files`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListFilesQuery {
    /// Only the files of this chat.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    chat_id: Option<String>,
    /// Only the files of this message.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    message_id: Option<String>,
    /// Only the files from this source.
    #[param(pattern = "^(upload|code_execution|figure)$")]
    source: Option<String>,
    /// Only the files whose name contains this text, whatever its case.
    #[param(max_length = 1024)]
    q: Option<String>,
    /// At most this many files (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The caller's live files, newest first, filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
        ListFilesQuery,
    ),
    responses(
        (status = 200, body = FileList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn list_files(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Query(query): Query<ListFilesQuery>,
) -> ApiResult<Json<FileList>> {
    let listing = FileListing {
        chat_id: query.chat_id,
        message_id: query.message_id,
        source: query.source,
        q: query.q,
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = state.supervisor.list_files(&owner, listing).await?;
    Ok(Json(FileList {
        files: page.files.iter().map(|file| state.file_dto(file)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A file's metadata.
#[utoipa::path(
    get,
    path = "/v1/files/{file_id}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("file_id" = String, Path, description = "The file"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 200, body = File),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn get_file(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(file_id): Path<FileId>,
) -> ApiResult<Json<File>> {
    let file = state.supervisor.file(&owner, &file_id).await?;
    Ok(Json(state.file_dto(&file)))
}

/// Rename a file (in the user's own workspace, to a name no live file there has).
#[utoipa::path(
    patch,
    path = "/v1/files/{file_id}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("file_id" = String, Path, description = "The file"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    request_body = RenameFile,
    responses(
        (status = 200, body = File),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The name is taken in the user's own workspace", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn rename_file(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(file_id): Path<FileId>,
    body: Result<Json<RenameFile>, JsonRejection>,
) -> ApiResult<Json<File>> {
    let Json(body) = body.map_err(json_rejection)?;
    let file = state
        .supervisor
        .rename_file(&owner, &file_id, &body.name)
        .await?;
    Ok(Json(state.file_dto(&file)))
}

/// Delete a file: gone from listings and downloads at once, bytes purged later.
#[utoipa::path(
    delete,
    path = "/v1/files/{file_id}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("file_id" = String, Path, description = "The file"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
        DeleteQuery,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Messages of a live chat attach the file: `confirmation_required`", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn delete_file(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(file_id): Path<FileId>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    state
        .supervisor
        .delete_file_confirmed(&owner, &file_id, query.confirm.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `DELETE /v1/files/{file_id}`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Delete even when messages of a live chat attach the file (they then list it as
    /// `file_deleted`); without it such a file answers 409 `confirmation_required`.
    confirm: Option<bool>,
}

/// The query of a signed link.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LinkQuery {
    /// Unix seconds after which the link is refused.
    expires: Option<String>,
    /// Hex HMAC of the link.
    signature: Option<String>,
}

/// Download a file's bytes, with a token or a signed link.
#[utoipa::path(
    get,
    path = "/v1/files/{file_id}/content",
    tag = "files",
    security((), ("bearer" = [])),
    params(
        ("file_id" = String, Path, description = "The file"),
        ("X-User-Id" = Option<String>, Header, description = "The end user (with a token)", pattern = "^[!-~]{1,256}$"),
        ("Range" = Option<String>, Header, description = "One byte range"),
        ("If-None-Match" = Option<String>, Header, description = "A known ETag"),
        LinkQuery,
    ),
    responses(
        (status = 200, description = "The bytes, with the file's own Content-Type", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 416, description = "Range not satisfiable"),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    Path(file_id): Path<FileId>,
    Query(link): Query<LinkQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let file = match (link.expires, link.signature) {
        (Some(expires), Some(signature)) => {
            // An expiry that is not a number is an altered link like any other.
            let expires: u64 = expires
                .parse()
                .map_err(|_| ApiError::forbidden("the download link is not valid"))?;
            let file = state.supervisor.file_for_link(&file_id).await?;
            // An unknown file and a bad signature answer alike, so links cannot probe ids.
            let verified = file.as_ref().map(|file| {
                state
                    .signer
                    .verify(file.into(), expires, &signature, unix_now())
            });
            match (file, verified) {
                (Some(file), Some(Ok(()))) => file,
                (_, Some(Err(LinkError::Expired))) => {
                    return Err(ApiError::forbidden("the download link has expired"));
                }
                _ => return Err(ApiError::forbidden("the download link is not valid")),
            }
        }
        (None, None) => {
            let owner = auth::owner_of(&headers, &state.tokens)?;
            state.supervisor.file(&owner, &file_id).await?
        }
        _ => return Err(ApiError::forbidden("the download link is not valid")),
    };
    serve_file(&state, &file, &headers).await
}

/// Streams a file's bytes with the caching and range headers.
async fn serve_file(
    state: &AppState,
    file: &FileRecord,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    // The sha256 is hex, so it always makes a valid entity tag.
    let etag = format!("\"{}\"", file.sha256).parse::<ETag>().ok();
    let size = u64::try_from(file.size).unwrap_or(0);
    let mut response_headers = HeaderMap::new();
    let set = |headers: &mut HeaderMap, name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    if let Some(etag) = &etag {
        response_headers.typed_insert(etag.clone());
    }
    set(
        &mut response_headers,
        header::CACHE_CONTROL,
        "private, no-cache",
    );
    set(
        &mut response_headers,
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff",
    );
    response_headers.typed_insert(AcceptRanges::bytes());

    // `If-None-Match` compares weakly: `W/"<sha256>"` and `*` match as well.
    let not_modified = etag
        .as_ref()
        .zip(headers.typed_get::<IfNoneMatch>())
        .is_some_and(|(etag, condition)| !condition.precondition_passes(etag));
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }

    let range = download::parse_range(headers.typed_get::<Range>().as_ref(), size);
    let (status, span) = match range {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, Some(start..end)),
        RangeRequest::Unsatisfiable => {
            response_headers.typed_insert(ContentRange::unsatisfied_bytes(size));
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, response_headers).into_response());
        }
    };
    let length = span.as_ref().map_or(size, |span| span.end - span.start);
    if let Some(content_range) = span
        .clone()
        .and_then(|span| ContentRange::bytes(span, size).ok())
    {
        response_headers.typed_insert(content_range);
    }
    set(
        &mut response_headers,
        header::CONTENT_TYPE,
        &file.content_type,
    );
    response_headers.typed_insert(ContentLength(length));
    set(
        &mut response_headers,
        header::CONTENT_DISPOSITION,
        &download::content_disposition(&file.name),
    );
    let stream = state.supervisor.file_bytes(file, span).await?;
    metrics::counter!("codebox_downloaded_bytes_total").increment(length);
    let body = Body::from_stream(stream);
    Ok((status, response_headers, body).into_response())
}
