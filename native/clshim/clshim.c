/* requestflow's OpenCL forwarding library ("clshim"), for OpenCL devices without non-uniform work-groups (issue #5).
 *
 * ArmCL's OpenCL backend compiles every kernel for non-uniform work-groups and enqueues global sizes that are not
 * multiples of the local size. CLCompileContext::generate_build_options() (src/core/CL/CLCompileContext.cpp) asks
 * CLDevice::is_non_uniform_workgroup_supported() (arm_compute/core/CL/CLDevice.h), which accepts
 *   an "OpenCL 3" device with CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT true -> -cl-std=CL3.0,
 *   an "OpenCL 2" device                                                    -> -cl-std=CL2.0,
 *   a device listing cl_arm_non_uniform_work_group_size                     -> -cl-arm-non-uniform-work-group-size,
 * and otherwise stops with ARM_COMPUTE_ERROR("Non uniform workgroup size is not supported!!"). Debian's PoCL 3.1
 * (CPU) is "OpenCL 3.0" without the capability and without the extension, so ArmCL refuses it.
 *
 * This library is the libOpenCL.so that ArmCL dlopen()s (CLSymbols::load_default() opens "libOpenCL.so" by name and
 * dlsym()s every function from that handle, so LD_PRELOAD does not reach it: the folder holding this library goes
 * first in LD_LIBRARY_PATH). It loads the real OpenCL library by absolute path ($REQUESTFLOW_CLSHIM_REAL, else the
 * path found when it was built) and forwards the whole OpenCL 3.0 API to it (clshim_api.h), changing five calls:
 *   clGetDeviceInfo         CL_DEVICE_EXTENSIONS (and CL_DEVICE_EXTENSIONS_WITH_VERSION) also list
 *                           cl_arm_non_uniform_work_group_size, so ArmCL takes its third branch. Nothing else is
 *                           reported differently: CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT stays the driver's answer,
 *                           so ArmCL does not switch the kernels to -cl-std=CL3.0 (PoCL's OpenCL C is 1.2).
 *   clBuildProgram,         the option -cl-arm-non-uniform-work-group-size is removed (PoCL answers
 *   clCompileProgram        CL_INVALID_BUILD_OPTIONS to it); the other options reach the driver byte for byte.
 *   clEnqueueNDRangeKernel  when a local size is given and some global size is not a multiple of it, the local size
 *                           becomes NULL so that the driver chooses one that divides the global size; every work-item
 *                           still runs exactly once. Any other enqueue is passed on unchanged.
 *   clCreateProgramWithSource  lines "#define NAME NAME" (an object-like macro that expands to its own name) are
 *                           blanked, newlines kept. In standard OpenCL C such a macro changes nothing; but PoCL
 *                           renames its builtins with macros (_builtin_renames.h: "#define convert_uchar2_sat
 *                           _cl_convert_uchar2_sat"), and ArmCL's helpers.h "#define convert_uchar2_sat
 *                           convert_uchar2_sat" replaces that rename, leaving the builtin undeclared: every kernel
 *                           including helpers.h that saturates to uchar (DIRECT convolution, for one) fails to build.
 *
 * Applied only where needed: requestflow/board/clshim.py decides from the board's OpenCL devices and sets the
 * environment. Inside a process every device is treated the same way.
 *
 * Environment:
 *   REQUESTFLOW_CLSHIM_REAL   absolute path of the real OpenCL library (default CLSHIM_DEFAULT_REAL, set at build)
 *   REQUESTFLOW_CLSHIM_LOG=1  one stderr line per changed call (otherwise one line, when the shim is first used)
 *   REQUESTFLOW_CLSHIM_STATS  a file to which each process that used OpenCL appends its counters, as one line
 *                             of JSON, when it exits
 */
#define _GNU_SOURCE
#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_0_APIS
#define CL_USE_DEPRECATED_OPENCL_1_1_APIS
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#define CL_USE_DEPRECATED_OPENCL_2_0_APIS
#define CL_USE_DEPRECATED_OPENCL_2_1_APIS
#define CL_USE_DEPRECATED_OPENCL_2_2_APIS
#include <CL/cl.h>

#include <ctype.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CLSHIM_DEFAULT_REAL
#error "build with -DCLSHIM_DEFAULT_REAL='\"/absolute/path/of/the/real/libOpenCL.so.1\"'"
#endif

#define EXPORT __attribute__((visibility("default")))
#define SHIM "requestflow-clshim"
#define ARM_EXTENSION "cl_arm_non_uniform_work_group_size"
#define ARM_OPTION "-cl-arm-non-uniform-work-group-size"

/* The real library's entry points, resolved once, all together. */
static struct {
#define CLSHIM_API(kind, ret, name, params, args) ret(*name) params;
#include "clshim_api.h"
#undef CLSHIM_API
} real;

static pthread_once_t loaded = PTHREAD_ONCE_INIT;
static const char *real_path;
static int real_ok;
static int log_calls;
static pid_t owner_pid; /* a forked child that exits must not report its parent's counts again */

static struct {
    uint64_t enqueues, rewritten_enqueues, stripped_build_options, reported_extension, patched_sources;
} counts;

static void count(uint64_t *counter) { __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); }

static uint64_t read_count(uint64_t *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }

/* Also the mark by which the shim recognises itself if REQUESTFLOW_CLSHIM_REAL points back at it. */
EXPORT void requestflow_clshim_counts(uint64_t out[4]) {
    out[0] = read_count(&counts.enqueues);
    out[1] = read_count(&counts.rewritten_enqueues);
    out[2] = read_count(&counts.stripped_build_options);
    out[3] = read_count(&counts.reported_extension);
}

static void load_real(void) {
    const char *env = getenv("REQUESTFLOW_CLSHIM_REAL");
    const char *log = getenv("REQUESTFLOW_CLSHIM_LOG");
    real_path = env && *env ? env : CLSHIM_DEFAULT_REAL;
    log_calls = log && *log && strcmp(log, "0") != 0;
    void *handle = dlopen(real_path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        fprintf(stderr, SHIM ": cannot load the real OpenCL library %s (%s); set REQUESTFLOW_CLSHIM_REAL to its "
                        "absolute path. Every OpenCL call now fails.\n", real_path, dlerror());
        return;
    }
    if (dlsym(handle, "requestflow_clshim_counts") != NULL) {
        fprintf(stderr, SHIM ": %s is this shim, not the real OpenCL library; set REQUESTFLOW_CLSHIM_REAL to the "
                        "real one's absolute path. Every OpenCL call now fails.\n", real_path);
        dlclose(handle);
        return;
    }
#define CLSHIM_API(kind, ret, name, params, args) real.name = (ret(*) params)dlsym(handle, #name);
#include "clshim_api.h"
#undef CLSHIM_API
    real_ok = 1;
    fprintf(stderr, SHIM ": active, forwarding to %s: reports " ARM_EXTENSION ", drops " ARM_OPTION
                    ", lets the driver choose the local size when a global size is not a multiple of it, blanks "
                    "self-defining macros in program sources\n", real_path);
}

static int ready(void) {
    pthread_once(&loaded, load_real);
    return real_ok;
}

/* The forwarders. */
#define FORWARD_INT(ret, name, params, args)                                                                         \
    EXPORT ret name params {                                                                                         \
        if (!ready() || real.name == NULL) return CL_INVALID_OPERATION;                                              \
        return real.name args;                                                                                       \
    }
#define FORWARD_ERR(ret, name, params, args)                                                                         \
    EXPORT ret name params {                                                                                         \
        if (!ready() || real.name == NULL) {                                                                         \
            if (errcode_ret != NULL) *errcode_ret = CL_INVALID_OPERATION;                                            \
            return NULL;                                                                                             \
        }                                                                                                            \
        return real.name args;                                                                                       \
    }
#define FORWARD_PTR(ret, name, params, args)                                                                         \
    EXPORT ret name params {                                                                                         \
        if (!ready() || real.name == NULL) return NULL;                                                              \
        return real.name args;                                                                                       \
    }
#define FORWARD_VOID(ret, name, params, args)                                                                        \
    EXPORT ret name params {                                                                                         \
        if (ready() && real.name != NULL) real.name args;                                                            \
    }
#define FORWARD_OWN(ret, name, params, args)
#define CLSHIM_API(kind, ret, name, params, args) FORWARD_##kind(ret, name, params, args)
#include "clshim_api.h"
#undef CLSHIM_API

/* Whether a whitespace-separated list holds a word. */
static const char *find_word(const char *list, const char *word) {
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n) {
        int starts = p == list || isspace((unsigned char)p[-1]);
        int ends = p[n] == '\0' || isspace((unsigned char)p[n]);
        if (starts && ends) return p;
    }
    return NULL;
}

/* Answers a clGet*Info query with `size` bytes of `data`, as the specification says. */
static cl_int answer(const void *data, size_t size, size_t value_size, void *value, size_t *value_size_ret) {
    if (value != NULL) {
        if (value_size < size) return CL_INVALID_VALUE;
        memcpy(value, data, size);
    }
    if (value_size_ret != NULL) *value_size_ret = size;
    return CL_SUCCESS;
}

static cl_int device_extensions(cl_device_id device, size_t value_size, void *value, size_t *value_size_ret) {
    size_t size = 0;
    cl_int err = real.clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, 0, NULL, &size);
    if (err != CL_SUCCESS) return err;
    char *text = calloc(size + sizeof(" " ARM_EXTENSION), 1);
    if (text == NULL) return CL_OUT_OF_HOST_MEMORY;
    err = real.clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, size, text, NULL);
    if (err == CL_SUCCESS) {
        if (find_word(text, ARM_EXTENSION) == NULL) {
            size_t length = strlen(text);
            if (length > 0 && !isspace((unsigned char)text[length - 1])) text[length++] = ' ';
            memcpy(text + length, ARM_EXTENSION, sizeof(ARM_EXTENSION));
            count(&counts.reported_extension);
            if (log_calls) fprintf(stderr, SHIM ": CL_DEVICE_EXTENSIONS: added " ARM_EXTENSION "\n");
        }
        err = answer(text, strlen(text) + 1, value_size, value, value_size_ret);
    }
    free(text);
    return err;
}

static cl_int device_extensions_with_version(cl_device_id device, size_t value_size, void *value,
                                             size_t *value_size_ret) {
    size_t size = 0;
    cl_int err = real.clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS_WITH_VERSION, 0, NULL, &size);
    if (err != CL_SUCCESS) return err; /* an OpenCL 1.x/2.x driver: its own answer */
    size_t n = size / sizeof(cl_name_version);
    cl_name_version *list = calloc(n + 1, sizeof(cl_name_version));
    if (list == NULL) return CL_OUT_OF_HOST_MEMORY;
    err = real.clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS_WITH_VERSION, n * sizeof(cl_name_version), list, NULL);
    if (err == CL_SUCCESS) {
        size_t i = 0;
        while (i < n && strcmp(list[i].name, ARM_EXTENSION) != 0) i++;
        if (i == n) {
            list[n].version = CL_MAKE_VERSION(1, 0, 0);
            snprintf(list[n].name, sizeof(list[n].name), "%s", ARM_EXTENSION);
            n++;
        }
        err = answer(list, n * sizeof(cl_name_version), value_size, value, value_size_ret);
    }
    free(list);
    return err;
}

EXPORT cl_int clGetDeviceInfo(cl_device_id device, cl_device_info param_name, size_t param_value_size,
                              void *param_value, size_t *param_value_size_ret) {
    if (!ready() || real.clGetDeviceInfo == NULL) return CL_INVALID_OPERATION;
    if (param_name == CL_DEVICE_EXTENSIONS)
        return device_extensions(device, param_value_size, param_value, param_value_size_ret);
    if (param_name == CL_DEVICE_EXTENSIONS_WITH_VERSION)
        return device_extensions_with_version(device, param_value_size, param_value, param_value_size_ret);
    return real.clGetDeviceInfo(device, param_name, param_value_size, param_value, param_value_size_ret);
}

/* The build options without -cl-arm-non-uniform-work-group-size (each occurrence blanked out, the rest byte for
 * byte), or NULL when they do not hold it. The caller frees the copy. */
static char *without_arm_option(const char *options) {
    if (options == NULL || find_word(options, ARM_OPTION) == NULL) return NULL;
    char *copy = strdup(options);
    if (copy == NULL) return NULL;
    for (char *p; (p = (char *)find_word(copy, ARM_OPTION)) != NULL;) memset(p, ' ', strlen(ARM_OPTION));
    count(&counts.stripped_build_options);
    if (log_calls) fprintf(stderr, SHIM ": build options: dropped " ARM_OPTION "\n");
    return copy;
}

EXPORT cl_int clBuildProgram(cl_program program, cl_uint num_devices, const cl_device_id *device_list,
                             const char *options, void (*pfn_notify)(cl_program program, void *user_data),
                             void *user_data) {
    if (!ready() || real.clBuildProgram == NULL) return CL_INVALID_OPERATION;
    char *rewritten = without_arm_option(options);
    cl_int err = real.clBuildProgram(program, num_devices, device_list, rewritten ? rewritten : options, pfn_notify,
                                     user_data);
    free(rewritten);
    return err;
}

EXPORT cl_int clCompileProgram(cl_program program, cl_uint num_devices, const cl_device_id *device_list,
                               const char *options, cl_uint num_input_headers, const cl_program *input_headers,
                               const char **header_include_names,
                               void (*pfn_notify)(cl_program program, void *user_data), void *user_data) {
    if (!ready() || real.clCompileProgram == NULL) return CL_INVALID_OPERATION;
    char *rewritten = without_arm_option(options);
    cl_int err = real.clCompileProgram(program, num_devices, device_list, rewritten ? rewritten : options,
                                       num_input_headers, input_headers, header_include_names, pfn_notify, user_data);
    free(rewritten);
    return err;
}

EXPORT cl_int clEnqueueNDRangeKernel(cl_command_queue command_queue, cl_kernel kernel, cl_uint work_dim,
                                     const size_t *global_work_offset, const size_t *global_work_size,
                                     const size_t *local_work_size, cl_uint num_events_in_wait_list,
                                     const cl_event *event_wait_list, cl_event *event) {
    if (!ready() || real.clEnqueueNDRangeKernel == NULL) return CL_INVALID_OPERATION;
    count(&counts.enqueues);
    if (local_work_size != NULL && global_work_size != NULL) {
        cl_uint d = 0;
        while (d < work_dim && (local_work_size[d] == 0 || global_work_size[d] % local_work_size[d] == 0)) d++;
        if (d < work_dim) {
            count(&counts.rewritten_enqueues);
            if (log_calls) {
                fprintf(stderr, SHIM ": enqueue: global");
                for (cl_uint i = 0; i < work_dim; i++) fprintf(stderr, " %zu", global_work_size[i]);
                fprintf(stderr, ", local");
                for (cl_uint i = 0; i < work_dim; i++) fprintf(stderr, " %zu", local_work_size[i]);
                fprintf(stderr, " -> local chosen by the driver\n");
            }
            local_work_size = NULL;
        }
    }
    return real.clEnqueueNDRangeKernel(command_queue, kernel, work_dim, global_work_offset, global_work_size,
                                       local_work_size, num_events_in_wait_list, event_wait_list, event);
}

/* Whether the line [line, end) is "#define NAME NAME" (spaces and tabs anywhere between the tokens). */
static int self_define(const char *line, const char *end) {
    const char *p = line;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p >= end || *p++ != '#') return 0;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (end - p < 6 || strncmp(p, "define", 6) != 0) return 0;
    p += 6;
    if (p >= end || (*p != ' ' && *p != '\t')) return 0;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    const char *name = p;
    while (p < end && (isalnum((unsigned char)*p) || *p == '_')) p++;
    size_t length = (size_t)(p - name);
    if (length == 0 || isdigit((unsigned char)*name) || p >= end || (*p != ' ' && *p != '\t')) return 0;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if ((size_t)(end - p) < length || strncmp(p, name, length) != 0) return 0;
    p += length;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
    return p == end;
}

/* A copy of the source with its self-defining lines blanked, or NULL when it has none. The caller frees it. */
static char *without_self_defines(const char *source, size_t size) {
    char *copy = NULL;
    for (size_t start = 0; start < size;) {
        const char *newline = memchr(source + start, '\n', size - start);
        size_t end = newline ? (size_t)(newline - source) : size;
        if (self_define(source + start, source + end)) {
            if (copy == NULL) {
                copy = malloc(size + 1);
                if (copy == NULL) return NULL;
                memcpy(copy, source, size);
                copy[size] = '\0';
            }
            if (log_calls) fprintf(stderr, SHIM ": program source: blanked %.*s\n", (int)(end - start), source + start);
            memset(copy + start, ' ', end - start);
        }
        start = end + 1;
    }
    return copy;
}

EXPORT cl_program clCreateProgramWithSource(cl_context context, cl_uint count_strings, const char **strings,
                                            const size_t *lengths, cl_int *errcode_ret) {
    if (!ready() || real.clCreateProgramWithSource == NULL) {
        if (errcode_ret != NULL) *errcode_ret = CL_INVALID_OPERATION;
        return NULL;
    }
    if (strings == NULL || count_strings == 0)
        return real.clCreateProgramWithSource(context, count_strings, strings, lengths, errcode_ret);
    const char **patched = calloc(count_strings, sizeof(char *));
    size_t *sizes = calloc(count_strings, sizeof(size_t));
    char **owned = calloc(count_strings, sizeof(char *));
    cl_program program = NULL;
    if (patched == NULL || sizes == NULL || owned == NULL) {
        if (errcode_ret != NULL) *errcode_ret = CL_OUT_OF_HOST_MEMORY;
        goto done;
    }
    int changed = 0;
    for (cl_uint i = 0; i < count_strings; i++) {
        if (strings[i] == NULL) {  /* the driver reports it: pass the call on as it came */
            changed = 0;
            break;
        }
        sizes[i] = lengths != NULL && lengths[i] != 0 ? lengths[i] : strlen(strings[i]);
        owned[i] = without_self_defines(strings[i], sizes[i]);
        patched[i] = owned[i] ? owned[i] : strings[i];
        changed |= owned[i] != NULL;
    }
    if (changed) count(&counts.patched_sources);
    program = changed ? real.clCreateProgramWithSource(context, count_strings, patched, sizes, errcode_ret)
                      : real.clCreateProgramWithSource(context, count_strings, strings, lengths, errcode_ret);
done:
    for (cl_uint i = 0; owned != NULL && i < count_strings; i++) free(owned[i]);
    free(owned);
    free(sizes);
    free(patched);
    return program;
}

/* At exit, a process that used OpenCL through the shim appends one line of JSON with its counters to
 * $REQUESTFLOW_CLSHIM_STATS, in a single write (O_APPEND), so that several processes sharing the variable each add
 * their own line and none overwrites another's. */
static void json_string(FILE *out, const char *text) {
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if (*p < 0x20) fprintf(out, "\\u%04x", *p);
        else fputc(*p, out);
    }
    fputc('"', out);
}

__attribute__((constructor)) static void remember_owner(void) { owner_pid = getpid(); }

__attribute__((destructor)) static void write_stats(void) {
    const char *path = getenv("REQUESTFLOW_CLSHIM_STATS");
    if (path == NULL || *path == '\0' || real_path == NULL || getpid() != owner_pid) return;
    char *line = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&line, &length);
    if (out == NULL) return;
    fprintf(out, "{\"shim\": \"" SHIM "\", \"pid\": %ld, \"real\": ", (long)getpid());
    json_string(out, real_path);
    fprintf(out, ", \"loaded\": %s, \"enqueues\": %llu, \"rewritten_enqueues\": %llu, \"stripped_build_options\": %llu"
                 ", \"reported_extension\": %llu, \"patched_sources\": %llu}\n", real_ok ? "true" : "false",
            (unsigned long long)read_count(&counts.enqueues),
            (unsigned long long)read_count(&counts.rewritten_enqueues),
            (unsigned long long)read_count(&counts.stripped_build_options),
            (unsigned long long)read_count(&counts.reported_extension),
            (unsigned long long)read_count(&counts.patched_sources));
    fclose(out);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, length) != (ssize_t)length) fprintf(stderr, SHIM ": cannot write %s\n", path);
    if (fd >= 0) close(fd);
    free(line);
}
