/*
 * trenv_rand.node: re-seeds the OpenSSL DRBG of a Node process restored from a checkpoint.
 *
 * Every clone restored from one CRIU checkpoint (or one VM template) starts with a copy of the
 * template's OpenSSL state. OpenSSL 3.0 re-seeds its DRBGs by itself only when getpid()
 * changes, and restored clones keep the template's PID, so without this every clone would
 * draw the same "random" bytes for key generation, ECDH, TLS handshakes and randomBytes.
 * Node has no JavaScript call that re-seeds OpenSSL, so this N-API addon calls RAND_add()
 * from the OpenSSL that is linked into the node binary (its symbols are exported for addons):
 * the primary DRBG is re-seeded (fresh entropy from its seed source plus the given bytes as
 * additional input), and the per-thread public/private DRBGs re-seed from it on their next
 * use because the primary's reseed counter changed.
 *
 * exports.reseed(buffer) -> true when RAND_status() reports the DRBG ready afterwards.
 * The buffer must hold 16..4096 bytes (the daemon's per-clone seed mixed with kernel bytes).
 */
#include <node_api.h>
#include <stddef.h>

/* OpenSSL 3.0 (libcrypto inside the node binary) */
extern void RAND_add(const void *buf, int num, double randomness);
extern int RAND_status(void);

static napi_value reseed(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  bool is_buffer = false;
  if (argc < 1 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, NULL, "trenv_rand.reseed: expected a Buffer");
    return NULL;
  }
  void *data = NULL;
  size_t len = 0;
  if (napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok) return NULL;
  if (len < 16 || len > 4096) {
    napi_throw_range_error(env, NULL, "trenv_rand.reseed: the seed must hold 16..4096 bytes");
    return NULL;
  }
  RAND_add(data, (int)len, (double)len);
  napi_value ok;
  napi_get_boolean(env, RAND_status() == 1, &ok);
  return ok;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "reseed", NAPI_AUTO_LENGTH, reseed, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "reseed", fn) != napi_ok) return NULL;
  return exports;
}
