// LD_PRELOAD shim for the device: prints a native backtrace to stderr whenever a std::length_error,
// std::bad_alloc or bad_array_new_length is thrown, and on SIGSEGV / SIGABRT. pybind11 turns those C++
// exceptions into Python ValueError / MemoryError without a native stack, and the device has no gdb.
// When to use: a native crash or a bare ValueError / MemoryError from inside torch or ExecuTorch on the device.
//
//   g++ -O1 -shared -fPIC -o throwtrace.so scripts/tools/throwtrace.cc -ldl   (here; carry the .so)
//   LD_PRELOAD=$PWD/throwtrace.so python3 ...                                       (there)
// Offsets inside stripped libraries resolve only against the identical build (gdb `info symbol`).
#include <dlfcn.h>
#include <execinfo.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <typeinfo>
typedef void (*throw_fn)(void *, std::type_info *, void (*)(void *));
extern "C" void __cxa_throw(void *obj, std::type_info *tinfo, void (*dest)(void *)) {
    static throw_fn real = (throw_fn)dlsym(RTLD_NEXT, "__cxa_throw");
    const char *n = tinfo->name();
    if (strstr(n, "length_error") || strstr(n, "bad_alloc") || strstr(n, "bad_array")) {
        void *buf[80];
        int k = backtrace(buf, 80);
        dprintf(2, "\n=== THROWTRACE %s\n", n);
        backtrace_symbols_fd(buf, k, 2);
        dprintf(2, "=== END THROWTRACE\n");
    }
    real(obj, tinfo, dest);
    __builtin_unreachable();
}
#include <signal.h>
#include <stdlib.h>
static void on_segv(int sig) {
    void *buf[80];
    int k = backtrace(buf, 80);
    dprintf(2, "\n=== SEGVTRACE %d\n", sig);
    backtrace_symbols_fd(buf, k, 2);
    dprintf(2, "=== END SEGVTRACE\n");
    signal(sig, SIG_DFL);
    raise(sig);
}
__attribute__((constructor)) static void install(void) {
    signal(SIGSEGV, on_segv);
    signal(SIGABRT, on_segv);
}
