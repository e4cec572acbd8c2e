/*
 * agent._speedups: the two per-line loops of the logs-API read path, in C.
 *
 * Profiling the agent reading 4 containers through the logs API put about a third of its
 * CPU in two Python loops that run once per log line: removing the HTTP chunk framing
 * (the engine sends every log message as its own chunk) and turning whole 8-byte-header
 * frames into records. Both are pure functions of bytes; agent/httpstream.py and
 * agent/logstream.py keep the Python versions, use these when the module was built, and
 * the unit tests check that both give the same results.
 *
 * Only the plain, common shapes are handled here; anything else makes these functions say
 * so (a status flag, or None) and the Python code decides, so the odd cases have one
 * implementation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* -- records ------------------------------------------------------------------------- */

/* agent.record.Record is a Python class with __slots__; a record is built here by
 * allocating it and filling its slots directly, at their offsets (read once from the
 * class's member descriptors), which is what its __init__ does, without the call. */
#define MAX_SLOTS 32

static PyTypeObject *record_type = NULL;
static Py_ssize_t off_timestamp = -1, off_meta = -1, off_stream = -1, off_message = -1;
static Py_ssize_t off_kind = -1, off_truncated = -1, off_json = -1; /* read by encode */
static Py_ssize_t off_extra = -1;
/* agent.record.Extra (processing results) and orjson.dumps, when setup() was given them:
 * then encode_ndjson writes a record's level, fields and line count itself. */
static PyTypeObject *extra_type = NULL;
static Py_ssize_t off_extra_level = -1, off_extra_fields = -1, off_extra_lines = -1;
static PyObject *json_dumps = NULL;
/* orjson.loads and orjson.JSONDecodeError, when setup() was given them: then encode_ndjson
 * derives a JSON message's fields itself (agent.record._json_fields). */
static PyObject *json_loads = NULL, *json_error = NULL;
/* Every slot of Extra and the value a new one starts with (setup_extra): json_fields
 * builds one as Extra() does, without the call. */
static Py_ssize_t extra_default_offsets[MAX_SLOTS];
static PyObject *extra_default_values[MAX_SLOTS];
static int n_extra_defaults = 0;
static PyObject *str_log = NULL, *str_log_prefixes = NULL, *str_json = NULL;
static Py_ssize_t default_offsets[MAX_SLOTS];
static PyObject *default_values[MAX_SLOTS];
static int n_defaults = 0;
static PyObject *stream_names[3] = {NULL, NULL, NULL};

/* Whether setup() was called: the functions that build or read records need its offsets
 * (else a RuntimeError is set). */
static int
set_up(void)
{
    if (record_type != NULL) {
        return 1;
    }
    PyErr_SetString(PyExc_RuntimeError, "setup() was not called");
    return 0;
}

static int
slot_offset(PyObject *type, PyObject *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttr(type, name);
    if (d == NULL) {
        return -1;
    }
    if (!PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%R is not a slot of the record type", name);
        Py_DECREF(d);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "slot %R holds no object", name);
        Py_DECREF(d);
        return -1;
    }
    *out = m->offset;
    Py_DECREF(d);
    return 0;
}

static void
clear_setup(void)
{
    for (int i = 0; i < n_defaults; i++) {
        Py_CLEAR(default_values[i]);
    }
    n_defaults = 0;
    Py_CLEAR(record_type);
    for (int i = 0; i < 3; i++) {
        Py_CLEAR(stream_names[i]);
    }
    off_timestamp = off_meta = off_stream = off_message = -1;
    off_kind = off_truncated = off_json = off_extra = -1;
    Py_CLEAR(extra_type);
    Py_CLEAR(json_dumps);
    Py_CLEAR(json_loads);
    Py_CLEAR(json_error);
    for (int i = 0; i < n_extra_defaults; i++) {
        Py_CLEAR(extra_default_values[i]);
    }
    n_extra_defaults = 0;
    off_extra_level = off_extra_fields = off_extra_lines = -1;
}

PyDoc_STRVAR(setup_doc,
"setup(record_type, defaults, streams[, extra_type, dumps[, loads, error]])\n\n"
"Learns the record type's slots. Every slot must be either one of timestamp, meta,\n"
"stream, message (set per line) or a key of ``defaults`` (the value every log record\n"
"built here starts with); ``streams`` names the streams of header bytes 0, 1, 2.\n"
"``extra_type`` (with slots level, fields, lines) and ``dumps`` (orjson.dumps): the\n"
"type of a record's ``extra`` slot, whose results encode_ndjson then writes itself.\n"
"``loads`` (orjson.loads) and ``error`` (orjson.JSONDecodeError): encode_ndjson then\n"
"derives the fields of a message that is a JSON object itself, as Record.json() does.");

static PyObject *
setup(PyObject *self, PyObject *args)
{
    PyObject *type, *defaults, *streams, *xtype = NULL, *dumps = NULL;
    PyObject *loads = NULL, *error = NULL;
    if (!PyArg_ParseTuple(args, "O!O!O!|O!OOO", &PyType_Type, &type, &PyDict_Type, &defaults,
                          &PyTuple_Type, &streams, &PyType_Type, &xtype, &dumps, &loads,
                          &error)) {
        return NULL;
    }
    if ((xtype == NULL) != (dumps == NULL) || (dumps != NULL && !PyCallable_Check(dumps))) {
        PyErr_SetString(PyExc_TypeError, "extra_type and a callable dumps go together");
        return NULL;
    }
    if ((loads == NULL) != (error == NULL) ||
        (loads != NULL && (!PyCallable_Check(loads) || !PyExceptionClass_Check(error)))) {
        PyErr_SetString(PyExc_TypeError, "a callable loads and an exception class go together");
        return NULL;
    }
    if (PyTuple_GET_SIZE(streams) != 3) {
        PyErr_SetString(PyExc_ValueError, "streams: three names");
        return NULL;
    }
    clear_setup();
    PyObject *slots = PyObject_GetAttrString(type, "__slots__");
    if (slots == NULL) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(slots, "__slots__ is not a sequence");
    Py_DECREF(slots);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t offset;
        if (!PyUnicode_Check(name) || slot_offset(type, name, &offset) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "a slot name is not a string");
            }
            goto fail;
        }
        const char *s = PyUnicode_AsUTF8(name);
        if (s == NULL) {
            goto fail;
        }
        if (strcmp(s, "timestamp") == 0) {
            off_timestamp = offset;
        }
        else if (strcmp(s, "meta") == 0) {
            off_meta = offset;
        }
        else if (strcmp(s, "stream") == 0) {
            off_stream = offset;
        }
        else if (strcmp(s, "message") == 0) {
            off_message = offset;
        }
        else {
            PyObject *value = PyDict_GetItemWithError(defaults, name);
            if (value == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_Format(PyExc_KeyError, "no default for the record slot %R", name);
                }
                goto fail;
            }
            if (n_defaults == MAX_SLOTS) {
                PyErr_SetString(PyExc_ValueError, "too many record slots");
                goto fail;
            }
            if (strcmp(s, "kind") == 0) {
                off_kind = offset;
            }
            else if (strcmp(s, "truncated") == 0) {
                off_truncated = offset;
            }
            else if (strcmp(s, "_json") == 0) {
                off_json = offset;
            }
            else if (strcmp(s, "extra") == 0) {
                off_extra = offset;
            }
            Py_INCREF(value);
            default_values[n_defaults] = value;
            default_offsets[n_defaults] = offset;
            n_defaults++;
        }
    }
    Py_DECREF(seq);
    if (off_timestamp < 0 || off_meta < 0 || off_stream < 0 || off_message < 0 ||
        off_kind < 0 || off_truncated < 0 || off_json < 0) {
        clear_setup();
        PyErr_SetString(PyExc_TypeError,
                        "the record type lacks one of timestamp, meta, stream, message, "
                        "kind, truncated, _json");
        return NULL;
    }
    if (xtype != NULL) {
        PyObject *names[3] = {PyUnicode_FromString("level"), PyUnicode_FromString("fields"),
                              PyUnicode_FromString("lines")};
        Py_ssize_t *offs[3] = {&off_extra_level, &off_extra_fields, &off_extra_lines};
        int bad = off_extra < 0;
        for (int i = 0; i < 3; i++) {
            if (!bad && (names[i] == NULL || slot_offset(xtype, names[i], offs[i]) < 0)) {
                bad = 1;
            }
            Py_XDECREF(names[i]);
        }
        if (bad) {
            clear_setup();
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "the record type has no extra slot");
            }
            return NULL;
        }
        extra_type = (PyTypeObject *)Py_NewRef(xtype);
        json_dumps = Py_NewRef(dumps);
        if (loads != NULL) {
            json_loads = Py_NewRef(loads);
            json_error = Py_NewRef(error);
        }
    }
    Py_INCREF(type);
    record_type = (PyTypeObject *)type;
    for (int i = 0; i < 3; i++) {
        stream_names[i] = Py_NewRef(PyTuple_GET_ITEM(streams, i));
    }
    Py_RETURN_NONE;
fail:
    Py_DECREF(seq);
    clear_setup();
    return NULL;
}

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* A new log record; steals ``timestamp`` and ``message``. */
static PyObject *
new_record(PyObject *timestamp, PyObject *meta, PyObject *stream, PyObject *message)
{
    PyObject *r = record_type->tp_alloc(record_type, 0);
    if (r == NULL) {
        Py_DECREF(timestamp);
        Py_DECREF(message);
        return NULL;
    }
    for (int i = 0; i < n_defaults; i++) {
        SLOT(r, default_offsets[i]) = Py_NewRef(default_values[i]);
    }
    SLOT(r, off_timestamp) = timestamp;
    SLOT(r, off_meta) = Py_NewRef(meta);
    SLOT(r, off_stream) = Py_NewRef(stream);
    SLOT(r, off_message) = message;
    return r;
}

/* -- frames -------------------------------------------------------------------------- */

#define HEADER 8
#define STAMP 30 /* "2026-11-28T10:21:02.258843177Z", RFC3339NanoFixed */

PyDoc_STRVAR(bulk_frames_doc,
"bulk_frames(frames, meta, max_bytes) -> list[Record] | None\n\n"
"One log record per frame when every item of ``frames`` is one whole frame of stream 1\n"
"or 2 holding one whole line: a 30-character stamp ending in 'Z', a space, a message of\n"
"at most ``max_bytes`` bytes without a newline, then a newline. None otherwise: the\n"
"caller's general decoder then takes the frames. Messages are decoded as UTF-8 with\n"
"replacement.");

static PyObject *
bulk_frames(PyObject *self, PyObject *args)
{
    PyObject *frames, *meta;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!On", &PyList_Type, &frames, &meta, &max_bytes)) {
        return NULL;
    }
    if (!set_up()) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(frames);
    /* Check every frame first: nothing is built for a batch that goes the general way. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(frames, i);
        if (!PyBytes_CheckExact(f)) {
            Py_RETURN_NONE;
        }
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(f);
        Py_ssize_t len = PyBytes_GET_SIZE(f);
        if (len < HEADER + STAMP + 2 || (p[0] != 1 && p[0] != 2) || p[1] || p[2] || p[3]) {
            Py_RETURN_NONE;
        }
        Py_ssize_t size = ((Py_ssize_t)p[4] << 24) | (p[5] << 16) | (p[6] << 8) | p[7];
        if (size != len - HEADER || size - STAMP - 2 > max_bytes) {
            Py_RETURN_NONE;
        }
        const unsigned char *payload = p + HEADER;
        if (payload[STAMP - 1] != 'Z' || payload[STAMP] != ' ' || payload[size - 1] != '\n') {
            Py_RETURN_NONE;
        }
        for (int k = 0; k < STAMP - 1; k++) {
            if (payload[k] & 0x80) {
                Py_RETURN_NONE;
            }
        }
        if (memchr(payload + STAMP + 1, '\n', size - STAMP - 2) != NULL) {
            Py_RETURN_NONE;
        }
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(frames, i);
        const char *p = PyBytes_AS_STRING(f);
        Py_ssize_t size = PyBytes_GET_SIZE(f) - HEADER;
        const char *payload = p + HEADER;
        PyObject *stamp = PyUnicode_New(STAMP, 127);
        if (stamp == NULL) {
            goto fail;
        }
        memcpy(PyUnicode_1BYTE_DATA(stamp), payload, STAMP);
        PyObject *message = PyUnicode_DecodeUTF8(payload + STAMP + 1, size - STAMP - 2, "replace");
        if (message == NULL) {
            Py_DECREF(stamp);
            goto fail;
        }
        PyObject *r = new_record(stamp, meta, stream_names[(unsigned char)p[0]], message);
        if (r == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(out, i, r);
    }
    return out;
fail:
    Py_DECREF(out); /* items not yet set are NULL, which list dealloc skips */
    return NULL;
}

/* -- HTTP chunks --------------------------------------------------------------------- */

PyDoc_STRVAR(dechunk_doc,
"dechunk(raw) -> (datas, consumed, unusual)\n\n"
"The data of the plain chunks (hex size, CRLF, data, CRLF) at the start of ``raw`` and\n"
"the bytes they took. ``unusual`` is True when the walk stopped at something other than\n"
"an incomplete chunk (the last chunk, an extension, a malformed size line): the caller's\n"
"general parser takes it from ``consumed``.");

static PyObject *
dechunk(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "dechunk() takes bytes");
        return NULL;
    }
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    Py_ssize_t pos = 0;
    int unusual = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (;;) {
        Py_ssize_t q = pos;
        Py_ssize_t size = 0;
        int digits = 0;
        while (q < n && digits <= 8) {
            unsigned char c = raw[q];
            int v;
            if (c >= '0' && c <= '9') {
                v = c - '0';
            }
            else if (c >= 'a' && c <= 'f') {
                v = c - 'a' + 10;
            }
            else if (c >= 'A' && c <= 'F') {
                v = c - 'A' + 10;
            }
            else {
                break;
            }
            size = size * 16 + v;
            digits++;
            q++;
        }
        if (digits > 8) {
            unusual = 1; /* no log chunk is 4 GiB: let the general parser judge */
            break;
        }
        if (q + 2 > n) {
            break; /* the size line has not fully arrived */
        }
        if (digits == 0 || raw[q] != '\r' || raw[q + 1] != '\n' || size == 0) {
            unusual = 1;
            break;
        }
        Py_ssize_t start = q + 2;
        if (size + 2 > n - start) {
            break; /* the data has not fully arrived */
        }
        if (raw[start + size] != '\r' || raw[start + size + 1] != '\n') {
            unusual = 1;
            break;
        }
        PyObject *data = PyBytes_FromStringAndSize((const char *)raw + start, size);
        if (data == NULL || PyList_Append(out, data) < 0) {
            Py_XDECREF(data);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(data);
        pos = start + size + 2;
    }
    return Py_BuildValue("(NnO)", out, pos, unusual ? Py_True : Py_False);
}

/* -- NDJSON ---------------------------------------------------------------------------- */

/* What orjson writes for the bytes below 0x20 and for '"' and '\\' (lowercase \u00xx,
 * the short forms where JSON has them); every other byte is copied as it is. */
static const char *escapes[128];
static char escape_store[32][7];

static void
init_escapes(void)
{
    for (int c = 0; c < 32; c++) {
        snprintf(escape_store[c], sizeof escape_store[c], "\\u%04x", c);
        escapes[c] = escape_store[c];
    }
    escapes['\b'] = "\\b";
    escapes['\t'] = "\\t";
    escapes['\n'] = "\\n";
    escapes['\f'] = "\\f";
    escapes['\r'] = "\\r";
    escapes['"'] = "\\\"";
    escapes['\\'] = "\\\\";
}

typedef struct {
    PyObject *bytes; /* a bytes object grown in place; trimmed at the end */
    Py_ssize_t len;
} Out;

/* The bytes per record of the last batch encode_ndjson wrote: the next batch's buffer is
 * sized from it. A buffer that has to grow is copied by realloc: with a fixed guess of 256
 * bytes per record, the bench's records of 480-620 bytes (batches of ~1,800) made each
 * batch's buffer grow twice, and realloc's copies took 40 % of the encoder's samples in a
 * native py-spy of the agent (all config). */
static Py_ssize_t record_bytes = 256;

static int
out_reserve(Out *o, Py_ssize_t more)
{
    Py_ssize_t cap = PyBytes_GET_SIZE(o->bytes);
    if (o->len + more <= cap) {
        return 0;
    }
    Py_ssize_t want = cap * 2;
    if (want < o->len + more) {
        want = o->len + more;
    }
    return _PyBytes_Resize(&o->bytes, want);
}

static inline void
out_put(Out *o, const char *p, Py_ssize_t n)
{
    memcpy(PyBytes_AS_STRING(o->bytes) + o->len, p, n);
    o->len += n;
}

/* Appends ``n`` bytes of UTF-8 as the inside of a JSON string. */
static int
out_escaped(Out *o, const unsigned char *p, Py_ssize_t n)
{
    if (o->len + n * 6 > PyBytes_GET_SIZE(o->bytes)) {
        /* Near the buffer's end: room for what the escapes take, not for the worst case
         * (that would grow a buffer sized for the batch at its last records). */
        Py_ssize_t more = n;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (p[i] < 0x80 && escapes[p[i]] != NULL) {
                more += (Py_ssize_t)strlen(escapes[p[i]]) - 1;
            }
        }
        if (out_reserve(o, more) < 0) {
            return -1;
        }
    }
    char *w = PyBytes_AS_STRING(o->bytes) + o->len;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x80 && escapes[c] != NULL) {
            const char *e = escapes[c];
            while (*e) {
                *w++ = *e++;
            }
        }
        else {
            *w++ = (char)c;
        }
    }
    o->len = w - PyBytes_AS_STRING(o->bytes);
    return 0;
}

/* After a message's escaped text: the closing quote, then what Record.json() writes after
 * it for processing results (agent.record._extra_keys: truncated, fields, level, lines),
 * the closing brace and "\n". */
static int
out_extra(Out *o, int truncated, PyObject *fields, PyObject *level, Py_ssize_t lines)
{
    if (out_reserve(o, 1 + 17) < 0) {
        return -1;
    }
    out_put(o, "\"", 1);
    if (truncated) {
        out_put(o, ",\"truncated\":true", 17);
    }
    if (fields != NULL) {
        PyObject *data = PyObject_CallOneArg(json_dumps, fields);
        if (data == NULL) {
            return -1;
        }
        if (!PyBytes_Check(data)) {
            Py_DECREF(data);
            PyErr_SetString(PyExc_TypeError, "dumps() did not return bytes");
            return -1;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        if (out_reserve(o, n + 10) < 0) {
            Py_DECREF(data);
            return -1;
        }
        out_put(o, ",\"fields\":", 10);
        out_put(o, PyBytes_AS_STRING(data), n);
        Py_DECREF(data);
    }
    if (level != NULL) { /* ASCII: checked by the caller */
        Py_ssize_t n = PyUnicode_GET_LENGTH(level);
        const char *p = (const char *)PyUnicode_1BYTE_DATA(level);
        if (out_reserve(o, 10) < 0) {
            return -1;
        }
        out_put(o, ",\"level\":\"", 10);
        if (out_escaped(o, (const unsigned char *)p, n) < 0 || out_reserve(o, 1) < 0) {
            return -1;
        }
        out_put(o, "\"", 1);
    }
    if (lines != 1) {
        char buf[48];
        int n = snprintf(buf, sizeof buf, ",\"lines\":%zd", lines);
        if (out_reserve(o, n) < 0) {
            return -1;
        }
        out_put(o, buf, n);
    }
    if (out_reserve(o, 2) < 0) {
        return -1;
    }
    out_put(o, "}\n", 2);
    return 0;
}

/* The record's JSON the Python way (Record.json(), cached on the record), then "\n". */
static int
out_json_method(Out *o, PyObject *r)
{
    PyObject *data = PyObject_CallMethodNoArgs(r, str_json);
    if (data == NULL) {
        return -1;
    }
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "Record.json() did not return bytes");
        Py_DECREF(data);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (out_reserve(o, n + 1) < 0) {
        Py_DECREF(data);
        return -1;
    }
    out_put(o, PyBytes_AS_STRING(data), n);
    out_put(o, "\n", 1);
    Py_DECREF(data);
    return 0;
}

PyDoc_STRVAR(encode_ndjson_doc,
"encode_ndjson(records) -> bytes\n\n"
"agent.record.encode_ndjson: each record's JSON and a newline, the same bytes. A log\n"
"line whose container's prefix for its stream is already built is written here from\n"
"its prefix, stamp and escaped message, without a bytes object of its own, with what\n"
"follows it (truncated; fields, level, lines of its processing results, Record.extra;\n"
"fields by orjson.dumps). A message that is a JSON object brace to brace, with no\n"
"parsed fields, has its fields derived here by the ``loads`` setup() was given (without\n"
"it, such a record, and a truncated one without results, go through Record.json()); any\n"
"other record through Record.json().");

static PyObject *
encode_ndjson(PyObject *self, PyObject *arg)
{
    if (!set_up()) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(arg, "encode_ndjson() takes a sequence of records");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Out o = {PyBytes_FromStringAndSize(NULL, n * record_bytes + 64), 0};
    if (o.bytes == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *last_meta = NULL, *last_stream = NULL, *prefix = NULL; /* borrowed */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, i);
        /* A JSON message's fields, derived here, and the record held while they are. */
        PyObject *derived = NULL, *held = NULL;
        if (Py_TYPE(r) != record_type) {
            goto general;
        }
        PyObject *cached = SLOT(r, off_json);
        if (cached != NULL && PyBytes_Check(cached)) {
            Py_ssize_t len = PyBytes_GET_SIZE(cached);
            if (out_reserve(&o, len + 1) < 0) {
                goto fail;
            }
            out_put(&o, PyBytes_AS_STRING(cached), len);
            out_put(&o, "\n", 1);
            continue;
        }
        int may_be_object = 0; /* the message is brace to brace and no fields were parsed */
        if (json_loads != NULL) {
            PyObject *message = SLOT(r, off_message), *extra = SLOT(r, off_extra);
            Py_ssize_t mlen = message != NULL && PyUnicode_CheckExact(message)
                                  ? PyUnicode_GET_LENGTH(message) : 0;
            may_be_object = mlen > 0 && PyUnicode_READ_CHAR(message, 0) == '{' &&
                            PyUnicode_READ_CHAR(message, mlen - 1) == '}' &&
                            (extra == NULL || extra == Py_None ||
                             (Py_TYPE(extra) == extra_type &&
                              SLOT(extra, off_extra_fields) == Py_None));
            if (may_be_object) {
                /* First, before any slot is read: orjson's allocations may run the GC,
                 * hence any code; the record and its message are held meanwhile. */
                held = Py_NewRef(r);
                Py_INCREF(message);
                derived = PyObject_CallOneArg(json_loads, message);
                Py_DECREF(message);
                if (derived == NULL) {
                    if (!PyErr_ExceptionMatches(json_error)) {
                        goto fail;
                    }
                    PyErr_Clear(); /* not JSON: no fields */
                }
                else if (!PyDict_Check(derived)) {
                    Py_CLEAR(derived);
                }
            }
        }
        PyObject *kind = SLOT(r, off_kind), *ts = SLOT(r, off_timestamp);
        PyObject *meta = SLOT(r, off_meta), *stream = SLOT(r, off_stream);
        PyObject *message = SLOT(r, off_message);
        if (kind == NULL || ts == NULL || meta == NULL || stream == NULL || message == NULL ||
            !PyUnicode_CheckExact(message) ||
            !PyUnicode_CheckExact(ts) || !PyUnicode_IS_ASCII(ts) ||
            !PyUnicode_CheckExact(stream)) {
            goto general;
        }
        if (kind != str_log && (!PyUnicode_Check(kind) || PyUnicode_Compare(kind, str_log) != 0)) {
            goto general;
        }
        /* Processing results (agent.record.Extra): level, fields, lines, when shown. */
        PyObject *level = NULL, *fields = NULL;
        Py_ssize_t lines = 1;
        PyObject *extra = off_extra >= 0 ? SLOT(r, off_extra) : NULL;
        if (extra != NULL && extra != Py_None) {
            if (extra_type == NULL || Py_TYPE(extra) != extra_type) {
                goto general;
            }
            level = SLOT(extra, off_extra_level);
            fields = SLOT(extra, off_extra_fields);
            PyObject *n = SLOT(extra, off_extra_lines);
            if (level == NULL || fields == NULL || n == NULL || !PyLong_CheckExact(n)) {
                goto general;
            }
            lines = PyLong_AsSsize_t(n);
            if (lines == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                goto general;
            }
            if (level == Py_None) {
                level = NULL;
            }
            else if (!PyUnicode_CheckExact(level) || !PyUnicode_IS_ASCII(level)) {
                goto general; /* (the normalised levels are ASCII) */
            }
            if (fields == Py_None) {
                fields = NULL;
            }
            if (level == NULL && fields == NULL && lines == 1) {
                extra = NULL; /* nothing shown: a plain line */
            }
        }
        else {
            extra = NULL;
        }
        PyObject *truncated = SLOT(r, off_truncated);
        if (truncated != Py_False &&
            (truncated != Py_True || (extra == NULL && json_loads == NULL))) {
            goto general;
        }
        Py_ssize_t mlen = PyUnicode_GET_LENGTH(message);
        if (fields == NULL && mlen > 0 && PyUnicode_READ_CHAR(message, 0) == '{' &&
            PyUnicode_READ_CHAR(message, mlen - 1) == '}') {
            if (!may_be_object) {
                goto general; /* maybe a JSON object: its fields, the Python way */
            }
            fields = derived; /* (None when it is not one) */
        }
        if (extra == NULL && (fields != NULL || truncated == Py_True)) {
            extra = Py_None; /* what follows the message is written as for results */
        }
        if (meta != last_meta || stream != last_stream) {
            PyObject *prefixes = PyObject_GetAttr(meta, str_log_prefixes);
            if (prefixes == NULL) {
                goto fail;
            }
            prefix = PyDict_Check(prefixes) ? PyDict_GetItemWithError(prefixes, stream) : NULL;
            Py_DECREF(prefixes); /* the metadata keeps the dict, and the dict the prefix */
            if (prefix == NULL && PyErr_Occurred()) {
                goto fail;
            }
            if (prefix == NULL || !PyBytes_Check(prefix)) {
                last_meta = last_stream = NULL;
                goto general; /* Record.json() builds it; the next line finds it */
            }
            last_meta = meta;
            last_stream = stream;
        }
        Py_ssize_t plen = PyBytes_GET_SIZE(prefix), tlen = PyUnicode_GET_LENGTH(ts);
        if (out_reserve(&o, plen + tlen + 16) < 0) {
            goto fail;
        }
        out_put(&o, PyBytes_AS_STRING(prefix), plen);
        out_put(&o, (const char *)PyUnicode_1BYTE_DATA(ts), tlen);
        out_put(&o, "\",\"message\":\"", 13);
        if (PyUnicode_IS_ASCII(message)) {
            if (out_escaped(&o, PyUnicode_1BYTE_DATA(message), mlen) < 0) {
                goto fail;
            }
        }
        else {
            /* A temporary UTF-8 copy: PyUnicode_AsUTF8 would keep one on the message. */
            PyObject *utf8 = PyUnicode_AsUTF8String(message);
            if (utf8 == NULL) {
                PyErr_Clear(); /* lone surrogates: let orjson say what it says */
                o.len -= plen + tlen + 13;
                goto general;
            }
            int rc = out_escaped(&o, (const unsigned char *)PyBytes_AS_STRING(utf8),
                                 PyBytes_GET_SIZE(utf8));
            Py_DECREF(utf8);
            if (rc < 0) {
                goto fail;
            }
        }
        if (extra != NULL) {
            if (out_extra(&o, truncated == Py_True, fields, level, lines) < 0) {
                goto fail;
            }
            goto next;
        }
        if (out_reserve(&o, 3) < 0) {
            goto fail;
        }
        out_put(&o, "\"}\n", 3);
        goto next;
    general:
        Py_CLEAR(derived);
        if (out_json_method(&o, r) < 0) {
            goto fail;
        }
    next:
        Py_XDECREF(derived);
        Py_XDECREF(held);
        continue;
    fail:
        Py_XDECREF(derived);
        Py_XDECREF(held);
        Py_DECREF(seq);
        Py_XDECREF(o.bytes);
        return NULL;
    }
    Py_DECREF(seq);
    if (n > 0) {
        /* The next batch's guess: this one's size per record and 1/16 more (records of
         * one batch vary little; a buffer a little too big is only trimmed below), at
         * most 4 KiB (a batch of a few long records must not size the next one). */
        Py_ssize_t per = o.len / n;
        per += per / 16 + 16;
        record_bytes = per < 64 ? 64 : per > 4096 ? 4096 : per;
    }
    Py_ssize_t cap = PyBytes_GET_SIZE(o.bytes);
    if (o.len > 0 && cap - o.len <= cap / 8) {
        /* Nearly full: the bytes object keeps its block, only its size is set (what
         * _PyBytes_Resize does, without the realloc). A large block is an mmap of its
         * own until glibc's malloc has seen one that size freed (it then raises its mmap
         * threshold to it); shrunk by realloc, the block it frees is smaller than the
         * next batch's, which is mapped again: a fresh mapping and a page fault per 4 KiB
         * of output for every batch (measured: 150,000 faults per million lines). */
        Py_SET_SIZE(o.bytes, o.len);
        PyBytes_AS_STRING(o.bytes)[o.len] = '\0';
        return o.bytes;
    }
    if (_PyBytes_Resize(&o.bytes, o.len) < 0) {
        return NULL;
    }
    return o.bytes;
}

/* -- the json parser's per-line loop ------------------------------------------------- */

PyDoc_STRVAR(setup_extra_doc,
"setup_extra(defaults)\n\n"
"Learns the slots of the extra type given to setup(): every one must be a key of\n"
"``defaults``, the value a new Extra() holds in it (json_fields builds one so).");

static PyObject *
setup_extra(PyObject *self, PyObject *defaults)
{
    if (!PyDict_Check(defaults)) {
        PyErr_SetString(PyExc_TypeError, "setup_extra() takes a dict");
        return NULL;
    }
    if (extra_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() was not given an extra type");
        return NULL;
    }
    for (int i = 0; i < n_extra_defaults; i++) {
        Py_CLEAR(extra_default_values[i]);
    }
    n_extra_defaults = 0;
    PyObject *slots = PyObject_GetAttrString((PyObject *)extra_type, "__slots__");
    if (slots == NULL) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(slots, "__slots__ is not a sequence");
    Py_DECREF(slots);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != PyDict_GET_SIZE(defaults) || n > MAX_SLOTS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "defaults: one value per slot of the extra type");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t offset;
        PyObject *value = PyUnicode_Check(name) ? PyDict_GetItemWithError(defaults, name) : NULL;
        if (value == NULL || slot_offset((PyObject *)extra_type, name, &offset) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_KeyError, "no default for the extra slot %R", name);
            }
            for (int j = 0; j < n_extra_defaults; j++) {
                Py_CLEAR(extra_default_values[j]);
            }
            n_extra_defaults = 0;
            Py_DECREF(seq);
            return NULL;
        }
        extra_default_offsets[n_extra_defaults] = offset;
        extra_default_values[n_extra_defaults] = Py_NewRef(value);
        n_extra_defaults++;
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(json_fields_doc,
"json_fields(batch, loads, error, names, spelled, from_text) -> (rest, parsed)\n\n"
"The json parser's common line, for each log record of ``batch`` (a list) whose message\n"
"is one JSON object brace to brace: ``loads(message)`` (``error``: it does not parse)\n"
"gives a dict; the first of the level field ``names`` present and not null holds a str\n"
"that ``spelled`` maps to a level (none present: ``from_text(message)``, or None when\n"
"``from_text`` is None); then the record's extra (made when it has none) gets those\n"
"fields and that level. Every other record (another message, not a dict, a level value\n"
"``spelled`` does not know, a dotted name that is not a key) is left untouched and\n"
"returned in ``rest``, in order, for the caller's general path; ``parsed``: how many\n"
"were done here.");

static PyObject *
json_fields(PyObject *self, PyObject *args)
{
    PyObject *batch, *loads, *error, *names, *spelled, *from_text;
    if (!PyArg_ParseTuple(args, "O!OOO!O!O", &PyList_Type, &batch, &loads, &error,
                          &PyTuple_Type, &names, &PyDict_Type, &spelled, &from_text)) {
        return NULL;
    }
    if (record_type == NULL || extra_type == NULL || off_extra < 0 || n_extra_defaults == 0) {
        PyErr_SetString(PyExc_RuntimeError, "setup() and setup_extra() were not called");
        return NULL;
    }
    Py_ssize_t n_names = PyTuple_GET_SIZE(names);
    if (n_names > 16) {
        PyErr_SetString(PyExc_ValueError, "at most 16 level field names");
        return NULL;
    }
    int dotted[16];
    for (Py_ssize_t k = 0; k < n_names; k++) {
        PyObject *name = PyTuple_GET_ITEM(names, k);
        if (!PyUnicode_CheckExact(name)) {
            PyErr_SetString(PyExc_TypeError, "level field names are str");
            return NULL;
        }
        Py_ssize_t at = PyUnicode_FindChar(name, '.', 0, PyUnicode_GET_LENGTH(name), 1);
        if (at == -2) {
            return NULL;
        }
        dotted[k] = at >= 0;
    }
    if (from_text == Py_None) {
        from_text = NULL;
    }
    PyObject *rest = PyList_New(0);
    if (rest == NULL) {
        return NULL;
    }
    Py_ssize_t parsed = 0;
    /* loads and from_text are called back: the list's size is read again each time, and
     * each record is held while it is looked at. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        PyObject *r = PyList_GET_ITEM(batch, i);
        PyObject *fields = NULL, *level = NULL;
        Py_INCREF(r);
        if (Py_TYPE(r) != record_type) {
            goto other;
        }
        PyObject *message = SLOT(r, off_message);
        PyObject *extra = SLOT(r, off_extra);
        if (message == NULL || !PyUnicode_CheckExact(message) || extra == NULL ||
            (extra != Py_None && Py_TYPE(extra) != extra_type)) {
            goto other;
        }
        Py_ssize_t mlen = PyUnicode_GET_LENGTH(message);
        if (mlen == 0 || PyUnicode_READ_CHAR(message, 0) != '{' ||
            PyUnicode_READ_CHAR(message, mlen - 1) != '}') {
            goto other;
        }
        Py_INCREF(message);
        fields = PyObject_CallOneArg(loads, message);
        if (fields == NULL) {
            Py_DECREF(message);
            if (!PyErr_ExceptionMatches(error)) {
                goto fail;
            }
            PyErr_Clear();
            goto other;
        }
        if (!PyDict_CheckExact(fields)) {
            Py_DECREF(message);
            goto other;
        }
        int found = 0;
        for (Py_ssize_t k = 0; k < n_names; k++) {
            PyObject *value = PyDict_GetItemWithError(fields, PyTuple_GET_ITEM(names, k));
            if (value == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(message);
                    goto fail;
                }
                if (dotted[k]) {
                    Py_DECREF(message);
                    goto other; /* maybe a path of nested objects: the Python way */
                }
                continue;
            }
            if (value == Py_None) {
                continue;
            }
            if (!PyUnicode_CheckExact(value)) {
                Py_DECREF(message);
                goto other;
            }
            level = PyDict_GetItemWithError(spelled, value);
            if (level == NULL) {
                Py_DECREF(message);
                if (PyErr_Occurred()) {
                    goto fail;
                }
                goto other;
            }
            Py_INCREF(level);
            found = 1;
            break;
        }
        if (!found) {
            if (from_text != NULL) {
                level = PyObject_CallOneArg(from_text, message);
                if (level == NULL) {
                    Py_DECREF(message);
                    goto fail;
                }
            }
            else {
                level = Py_NewRef(Py_None);
            }
        }
        Py_DECREF(message);
        extra = SLOT(r, off_extra); /* (from_text ran Python code) */
        if (extra == NULL || (extra != Py_None && Py_TYPE(extra) != extra_type)) {
            goto other;
        }
        if (extra == Py_None) {
            extra = extra_type->tp_alloc(extra_type, 0);
            if (extra == NULL) {
                goto fail;
            }
            for (int d = 0; d < n_extra_defaults; d++) {
                SLOT(extra, extra_default_offsets[d]) = Py_NewRef(extra_default_values[d]);
            }
            SLOT(r, off_extra) = extra;
            Py_DECREF(Py_None);
        }
        PyObject *old = SLOT(extra, off_extra_fields);
        SLOT(extra, off_extra_fields) = fields;
        Py_XDECREF(old);
        old = SLOT(extra, off_extra_level);
        SLOT(extra, off_extra_level) = level;
        Py_XDECREF(old);
        parsed++;
        Py_DECREF(r);
        continue;
    other:
        Py_XDECREF(fields);
        Py_XDECREF(level);
        if (PyList_Append(rest, r) < 0) {
            Py_DECREF(r);
            Py_DECREF(rest);
            return NULL;
        }
        Py_DECREF(r);
        continue;
    fail:
        Py_XDECREF(fields);
        Py_XDECREF(level);
        Py_DECREF(r);
        Py_DECREF(rest);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(Nn)", rest, parsed);
    return out;
}

/* The message of a batch's record as ASCII bytes, for the batch tests below: 1 and the
 * bytes, 0 for a record without a message (None), -1 when the test cannot be made here
 * (not a record of the set-up type, a message that is not an ASCII str). */
static int
ascii_message(PyObject *r, const unsigned char **s, Py_ssize_t *len)
{
    if (Py_TYPE(r) != record_type) {
        return -1;
    }
    PyObject *message = SLOT(r, off_message);
    if (message == Py_None) {
        return 0;
    }
    if (message == NULL || !PyUnicode_CheckExact(message) || !PyUnicode_IS_ASCII(message)) {
        return -1;
    }
    *s = PyUnicode_1BYTE_DATA(message);
    *len = PyUnicode_GET_LENGTH(message);
    return 1;
}

/* -- the redaction stage's batch gate ------------------------------------------------ */

/* What redact_gate reports, one bit each (agent/processing/redact.py _GATE_BITS). */
#define GATE_BEARER 1      /* "bearer" or "authorization", any case */
#define GATE_URL 2         /* "@" and "://" (anywhere in the batch, not one line) */
#define GATE_AWS 4         /* "secret", any case, or AKIA, ASIA, ABIA, ACCA, A3T */
#define GATE_JWT 8         /* "eyJ" */
#define GATE_CARD 16       /* 13 digits in a row, spaces and dashes between */
#define GATE_EMAIL 32      /* "@" */
#define GATE_ESCAPED 64    /* a backslash */

static inline int
ci_equal(const unsigned char *s, const char *word, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = s[k];
        if (c >= 'A' && c <= 'Z') {
            c += 'a' - 'A';
        }
        if (c != (unsigned char)word[k]) {
            return 0;
        }
    }
    return 1;
}

PyDoc_STRVAR(redact_gate_doc,
"redact_gate(batch) -> int | None\n\n"
"What the redaction presets' cheap tests (Redactor.candidates) find in the messages of\n"
"``batch`` (a list of log records; None counts as an empty message), as bits: 1 bearer\n"
"or authorization (any case), 2 both '@' and '://', 4 secret (any case) or an AWS key id\n"
"prefix, 8 eyJ, 16 thirteen digits with only spaces or dashes between, 32 '@', 64 a\n"
"backslash. One pass over the messages, without joining them. None when a message is not\n"
"an ASCII str (the caller's Python tests then look: lowercasing is Unicode's there).");

static PyObject *
redact_gate(PyObject *self, PyObject *batch)
{
    if (!PyList_Check(batch)) {
        PyErr_SetString(PyExc_TypeError, "redact_gate() takes a list");
        return NULL;
    }
    if (!set_up()) {
        return NULL;
    }
    long found = 0;
    int at = 0, scheme = 0;
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *s;
        Py_ssize_t len;
        int got = ascii_message(PyList_GET_ITEM(batch, i), &s, &len);
        if (got < 0) {
            Py_RETURN_NONE;
        }
        if (got == 0) {
            continue;
        }
        int run = 0; /* digits in a row, spaces and dashes between */
        for (Py_ssize_t j = 0; j < len; j++) {
            unsigned char c = s[j];
            if (c >= '0' && c <= '9') {
                if (++run >= 13) {
                    found |= GATE_CARD;
                }
                continue;
            }
            if (c == ' ' || c == '-') {
                continue;
            }
            run = 0;
            Py_ssize_t left = len - j;
            switch (c) {
            case '@':
                at = 1;
                break;
            case ':':
                if (left >= 3 && s[j + 1] == '/' && s[j + 2] == '/') {
                    scheme = 1;
                }
                break;
            case '\\':
                found |= GATE_ESCAPED;
                break;
            case 'e':
                if (left >= 3 && s[j + 1] == 'y' && s[j + 2] == 'J') {
                    found |= GATE_JWT;
                }
                break;
            case 'A':
                if (left >= 4 && s[j + 3] == 'A' &&
                    ((s[j + 1] == 'K' && s[j + 2] == 'I') || (s[j + 1] == 'S' && s[j + 2] == 'I') ||
                     (s[j + 1] == 'B' && s[j + 2] == 'I') || (s[j + 1] == 'C' && s[j + 2] == 'C'))) {
                    found |= GATE_AWS;
                }
                else if (left >= 3 && s[j + 1] == '3' && s[j + 2] == 'T') {
                    found |= GATE_AWS;
                }
                /* fall through: "A" also begins "authorization" */
                __attribute__((fallthrough));
            case 'a':
                if (left >= 13 && ci_equal(s + j, "authorization", 13)) {
                    found |= GATE_BEARER;
                }
                break;
            case 'B':
            case 'b':
                if (left >= 6 && ci_equal(s + j, "bearer", 6)) {
                    found |= GATE_BEARER;
                }
                break;
            case 'S':
            case 's':
                if (left >= 6 && ci_equal(s + j, "secret", 6)) {
                    found |= GATE_AWS;
                }
                break;
            default:
                break;
            }
        }
    }
    if (at) {
        found |= GATE_EMAIL;
        if (scheme) {
            found |= GATE_URL;
        }
    }
    return PyLong_FromLong(found);
}

/* -- substrings in a batch's messages ------------------------------------------------ */

PyDoc_STRVAR(find_any_doc,
"find_any(batch, needles, at_start) -> bool | None\n\n"
"Whether a message of ``batch`` (a list of log records; None counts as an empty\n"
"message) holds one of ``needles`` (a tuple of non-empty str), or with ``at_start``\n"
"begins with one. None when a needle, or a message before one that holds a needle, is\n"
"not an ASCII str: the caller's Python test then looks.");

#define MAX_NEEDLES 16

static PyObject *
find_any(PyObject *self, PyObject *args)
{
    PyObject *batch, *needles;
    int at_start;
    if (!PyArg_ParseTuple(args, "O!O!p", &PyList_Type, &batch, &PyTuple_Type, &needles,
                          &at_start)) {
        return NULL;
    }
    if (!set_up()) {
        return NULL;
    }
    Py_ssize_t k = PyTuple_GET_SIZE(needles);
    if (k > MAX_NEEDLES) {
        PyErr_SetString(PyExc_ValueError, "at most 16 needles");
        return NULL;
    }
    const unsigned char *nd[MAX_NEEDLES];
    Py_ssize_t nlen[MAX_NEEDLES];
    unsigned char first[256] = {0};
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PyTuple_GET_ITEM(needles, i);
        if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) == 0) {
            Py_RETURN_NONE;
        }
        nd[i] = PyUnicode_1BYTE_DATA(s);
        nlen[i] = PyUnicode_GET_LENGTH(s);
        first[nd[i][0]] = 1;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *s;
        Py_ssize_t len;
        int got = ascii_message(PyList_GET_ITEM(batch, i), &s, &len);
        if (got < 0) {
            Py_RETURN_NONE;
        }
        if (got == 0) {
            continue;
        }
        Py_ssize_t end = at_start ? (len > 0 ? 1 : 0) : len;
        for (Py_ssize_t j = 0; j < end; j++) {
            if (!first[s[j]]) {
                continue;
            }
            for (Py_ssize_t m = 0; m < k; m++) {
                if (nd[m][0] == s[j] && len - j >= nlen[m] && memcmp(s + j, nd[m], nlen[m]) == 0) {
                    Py_RETURN_TRUE; /* (what the other messages hold does not matter) */
                }
            }
        }
    }
    Py_RETURN_FALSE;
}

/* -- /metrics lines ------------------------------------------------------------------ */

/* The per-container series of a /metrics answer (agent/metrics/text.py keeps the Python
 * versions): a number as prometheus_client's floatToGoString writes it, and a series line
 * of already-escaped label texts, in UTF-8 (the answer's encoding). */

#define GO_MAX 48 /* repr of a double is at most 24 characters, +Go's exponent */

/* float(value) as floatToGoString writes it, into buf; its length, or -1 (an exception) */
static Py_ssize_t
go_chars(PyObject *value, char *buf)
{
    double d = PyFloat_AsDouble(value);
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (Py_IS_INFINITY(d)) {
        memcpy(buf, d > 0 ? "+Inf" : "-Inf", 4);
        return 4;
    }
    if (Py_IS_NAN(d)) {
        memcpy(buf, "NaN", 3);
        return 3;
    }
    /* repr(float): what float_repr does */
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) {
        return -1;
    }
    size_t len = strlen(s);
    if (len + 8 > GO_MAX) {
        PyMem_Free(s);
        PyErr_SetString(PyExc_ValueError, "go_float: unexpected repr");
        return -1;
    }
    const char *dotp = strchr(s, '.');
    Py_ssize_t dot = dotp != NULL ? dotp - s : -1;
    size_t n = 0;
    if (d > 0 && dot > 6) {
        /* Go switches to exponents sooner: s[0] "." s[1:dot] s[dot+1:], trailing '0' and
         * '.' stripped, then "e+" and the exponent in at least two digits. */
        buf[n++] = s[0];
        buf[n++] = '.';
        memcpy(buf + n, s + 1, (size_t)dot - 1);
        n += (size_t)dot - 1;
        memcpy(buf + n, s + dot + 1, len - (size_t)dot - 1);
        n += len - (size_t)dot - 1;
        while (n > 0 && (buf[n - 1] == '0' || buf[n - 1] == '.')) {
            n--;
        }
        n += (size_t)snprintf(buf + n, GO_MAX - n, "e+%02d", (int)(dot - 1));
    }
    else {
        memcpy(buf, s, len);
        n = len;
    }
    PyMem_Free(s);
    return (Py_ssize_t)n;
}

PyDoc_STRVAR(go_float_doc,
"go_float(value) -> str\n\n"
"prometheus_client.utils.floatToGoString(value): float(value) as Go writes it in the\n"
"exposition formats (repr, with an exponent from 1e+07 up; +Inf, -Inf, NaN).");

static PyObject *
go_float(PyObject *self, PyObject *arg)
{
    char buf[GO_MAX];
    Py_ssize_t n = go_chars(arg, buf);
    return n < 0 ? NULL : PyUnicode_FromStringAndSize(buf, n);
}

static PyObject *esc_from[3], *esc_to[3]; /* \\, \n, " and their escapes (module init) */

/* A label value as the exposition formats write it: \\, \n and " escaped. New reference. */
static PyObject *
escape_label(PyObject *value)
{
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a label value must be a str");
        return NULL;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(value);
    Py_INCREF(value);
    static const Py_UCS4 chars[3] = {'\\', '\n', '"'};
    for (int i = 0; i < 3; i++) {
        Py_ssize_t at = PyUnicode_FindChar(value, chars[i], 0, len, 1);
        if (at == -2) {
            Py_DECREF(value);
            return NULL;
        }
        if (at >= 0) {
            PyObject *next = PyUnicode_Replace(value, esc_from[i], esc_to[i], -1);
            Py_DECREF(value);
            if (next == NULL) {
                return NULL;
            }
            value = next;
            len = PyUnicode_GET_LENGTH(value);
        }
    }
    return value;
}

/* Pieces of one line: ASCII strs or C text, written into one new str. */
typedef struct {
    const char *p;
    Py_ssize_t n;
} piece;

static int
ascii_piece(PyObject *str, piece *out)
{
    if (!PyUnicode_IS_ASCII(str)) {
        return 0;
    }
    out->p = (const char *)PyUnicode_1BYTE_DATA(str);
    out->n = PyUnicode_GET_LENGTH(str);
    return 1;
}

PyDoc_STRVAR(series_line_doc,
"series_line(sample, labels, value) -> bytes\n\n"
"f'{sample}{{{labels}}} {go_float(value)}\\n' in UTF-8: one series of a /metrics answer,\n"
"its labels already written.");

static PyObject *
series_line(PyObject *self, PyObject *args)
{
    PyObject *sample, *labels, *value;
    if (!PyArg_ParseTuple(args, "UUO:series_line", &sample, &labels, &value)) {
        return NULL;
    }
    char number[GO_MAX];
    Py_ssize_t nn = go_chars(value, number);
    if (nn < 0) {
        return NULL;
    }
    piece a, b;
    if (!ascii_piece(sample, &a) || !ascii_piece(labels, &b)) {
        number[nn] = '\0';
        PyObject *text = PyUnicode_FromFormat("%U{%U} %s\n", sample, labels, number);
        if (text == NULL) {
            return NULL;
        }
        PyObject *utf8 = PyUnicode_AsUTF8String(text);
        Py_DECREF(text);
        return utf8;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, a.n + b.n + nn + 4);
    if (out == NULL) {
        return NULL;
    }
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, a.p, a.n);
    w += a.n;
    *w++ = '{';
    memcpy(w, b.p, b.n);
    w += b.n;
    *w++ = '}';
    *w++ = ' ';
    memcpy(w, number, nn);
    w += nn;
    *w = '\n';
    return out;
}

PyDoc_STRVAR(series_lines_doc,
"series_lines(sample, left, extra, right, pairs) -> bytes\n\n"
"''.join(f'{sample}{{{left}{extra}=\"{escaped label}\"{right}}} {go_float(value)}\\n'\n"
"for label, value in pairs) in UTF-8: the series of a family with one label of its own.");

#define MAX_PAIRS 64

static PyObject *
series_lines(PyObject *self, PyObject *args)
{
    PyObject *sample, *left, *extra, *right, *pairs;
    if (!PyArg_ParseTuple(args, "UUUUO:series_lines", &sample, &left, &extra, &right, &pairs)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(pairs, "series_lines: pairs must be iterable");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *labels[MAX_PAIRS];
    char numbers[MAX_PAIRS][GO_MAX];
    Py_ssize_t lengths[MAX_PAIRS];
    Py_ssize_t got = 0;
    PyObject *out = NULL;
    int ascii = n <= MAX_PAIRS;
    piece s, l, e, r;
    ascii = ascii && ascii_piece(sample, &s) && ascii_piece(left, &l) && ascii_piece(extra, &e)
            && ascii_piece(right, &r);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; ascii && i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "series_lines: pairs must be (label, value)");
            goto done;
        }
        PyObject *label = escape_label(PyTuple_GET_ITEM(pair, 0));
        if (label == NULL) {
            goto done;
        }
        labels[got++] = label;
        lengths[i] = go_chars(PyTuple_GET_ITEM(pair, 1), numbers[i]);
        if (lengths[i] < 0) {
            goto done;
        }
        if (!PyUnicode_IS_ASCII(label)) {
            ascii = 0;
            break;
        }
        /* name{ left extra =" label " right } value \n */
        total += s.n + l.n + e.n + r.n + PyUnicode_GET_LENGTH(label) + lengths[i] + 7;
    }
    if (ascii) {
        out = PyBytes_FromStringAndSize(NULL, total);
        if (out == NULL) {
            goto done;
        }
        char *w = PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++) {
            memcpy(w, s.p, s.n);
            w += s.n;
            *w++ = '{';
            memcpy(w, l.p, l.n);
            w += l.n;
            memcpy(w, e.p, e.n);
            w += e.n;
            *w++ = '=';
            *w++ = '"';
            Py_ssize_t ln = PyUnicode_GET_LENGTH(labels[i]);
            memcpy(w, PyUnicode_1BYTE_DATA(labels[i]), ln);
            w += ln;
            *w++ = '"';
            memcpy(w, r.p, r.n);
            w += r.n;
            *w++ = '}';
            *w++ = ' ';
            memcpy(w, numbers[i], lengths[i]);
            w += lengths[i];
            *w++ = '\n';
        }
        goto done;
    }
    /* a label that is not ASCII, or very many: one line at a time, joined */
    PyObject *parts = PyList_New(n);
    if (parts == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "series_lines: pairs must be (label, value)");
            Py_DECREF(parts);
            goto done;
        }
        char number[GO_MAX];
        Py_ssize_t nn = go_chars(PyTuple_GET_ITEM(pair, 1), number);
        PyObject *label = nn < 0 ? NULL : escape_label(PyTuple_GET_ITEM(pair, 0));
        if (label == NULL) {
            Py_DECREF(parts);
            goto done;
        }
        number[nn] = '\0';
        PyObject *line = PyUnicode_FromFormat(
            "%U{%U%U=\"%U\"%U} %s\n", sample, left, extra, label, right, number);
        Py_DECREF(label);
        if (line == NULL) {
            Py_DECREF(parts);
            goto done;
        }
        PyList_SET_ITEM(parts, i, line);
    }
    PyObject *empty = PyUnicode_FromStringAndSize(NULL, 0);
    if (empty != NULL) {
        PyObject *text = PyUnicode_Join(empty, parts);
        Py_DECREF(empty);
        if (text != NULL) {
            out = PyUnicode_AsUTF8String(text);
            Py_DECREF(text);
        }
    }
    Py_DECREF(parts);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        Py_DECREF(labels[i]);
    }
    Py_DECREF(seq);
    return out;
}

/* -- heap ---------------------------------------------------------------------------- */

PyDoc_STRVAR(malloc_trim_doc,
"malloc_trim() -> bool | None\n\n"
"glibc's malloc_trim(0): the heap's free pages handed back to the system; whether any\n"
"were (None elsewhere than glibc). What ctypes.CDLL(None).malloc_trim(0) does, without\n"
"loading ctypes.");

static PyObject *
malloc_trim_(PyObject *self, PyObject *unused)
{
#ifdef __GLIBC__
    int released;
    Py_BEGIN_ALLOW_THREADS
    released = malloc_trim(0);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(released);
#else
    Py_RETURN_NONE;
#endif
}

/* -- module -------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, setup_doc},
    {"bulk_frames", bulk_frames, METH_VARARGS, bulk_frames_doc},
    {"dechunk", dechunk, METH_O, dechunk_doc},
    {"encode_ndjson", encode_ndjson, METH_O, encode_ndjson_doc},
    {"setup_extra", setup_extra, METH_O, setup_extra_doc},
    {"json_fields", json_fields, METH_VARARGS, json_fields_doc},
    {"redact_gate", redact_gate, METH_O, redact_gate_doc},
    {"find_any", find_any, METH_VARARGS, find_any_doc},
    {"go_float", go_float, METH_O, go_float_doc},
    {"series_line", series_line, METH_VARARGS, series_line_doc},
    {"series_lines", series_lines, METH_VARARGS, series_lines_doc},
    {"malloc_trim", malloc_trim_, METH_NOARGS, malloc_trim_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "agent._speedups",
    "C versions of the logs-API read path's per-line loops (see agent/_speedups.c).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_escapes();
    str_log = PyUnicode_InternFromString("log");
    str_log_prefixes = PyUnicode_InternFromString("log_prefixes");
    str_json = PyUnicode_InternFromString("json");
    static const char *from[3] = {"\\", "\n", "\""};
    static const char *to[3] = {"\\\\", "\\n", "\\\""};
    for (int i = 0; i < 3; i++) {
        esc_from[i] = PyUnicode_InternFromString(from[i]);
        esc_to[i] = PyUnicode_InternFromString(to[i]);
        if (esc_from[i] == NULL || esc_to[i] == NULL) {
            return NULL;
        }
    }
    if (str_log == NULL || str_log_prefixes == NULL || str_json == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
