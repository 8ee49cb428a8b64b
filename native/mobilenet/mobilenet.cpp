// requestflow's MobileNets-v1 program on the Arm Compute Library's graph API (ArmCL 24.11 and 20.08): one process
// per benchmark point, driven by requestflow/board/backends/armcl_backend.py over a pipe.
//
// The network is built from a canonical weights folder (docs/weights-format.md: one float32 .npy per tensor, batch
// norm folded, HWIO / HWC1 layouts, 1000 or 1001 classes): conv0 3x3/2, 13 depthwise-separable blocks, global
// average pooling, a 1x1 convolution to the classes, softmax; ReLU6 (BOUNDED_RELU 6) after every layer but the
// logits; TensorFlow's SAME padding (even sizes: nothing before, one after, on stride-2 layers). Channels, width
// and classes come from the tensors' shapes; the resolution from --resolution.
//
// Protocol: after the graph is finalized and run once (kernels compiled, the CL tuner's tuning done), the program
// writes one line `READY <json>` on its protocol output (the original stdout; ArmCL's own prints go to stderr).
// Then, one command per line on stdin:
//   INFER            followed by batch*H*W*3 float32 (NHWC, scaled to [-1, 1]); answers `SCORES <n>` and n float32
//                    (batch x classes, the softmax output)
//   TIME <w> <r>     on the last input: w warm-up runs not counted, then r timed runs; answers `TIMES <json>`
//                    with every sample in seconds. A timed run is one graph run with the input already on the
//                    device: all kernels, the output mapped back (a blocking map) and the queue finished.
//   QUIT             ends (the CL tuner file, when tuning, is written when the backend is destroyed at exit)
// Errors: a line `ERROR <message>` and exit status 1 (2 for bad arguments).
//
// ArmCL releases: REQUESTFLOW_ARMCL_VERSION is the build's release as YYMM (2411, 2008), given by
// requestflow/board/armcl_program.py (and CMakeLists.txt) from the build's build.json; without it, the newest API.
// Every difference is one `#if REQUESTFLOW_ARMCL_VERSION > 2008` below (20.08's graph API checked against Debian
// bookworm's libarm-compute-dev 20.08+dfsg-7 headers).
#ifndef REQUESTFLOW_ARMCL_VERSION
#define REQUESTFLOW_ARMCL_VERSION 9999
#endif

#include <cstdint> // first: ArmCL 20.08's headers use uint8_t without including it (an error from GCC 13 on)

#include "arm_compute/graph.h"
#include "arm_compute/runtime/CL/CLTunerTypes.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace arm_compute;
using namespace arm_compute::graph;
using namespace arm_compute::graph::frontend;

namespace
{
FILE *protocol_out = nullptr; // the original stdout; fd 1 is pointed at stderr

struct Array
{
    std::vector<size_t> shape;
    std::vector<float>  data;
};

// A little-endian float32 C-order .npy (version 1.x or 2.x header, no pickle).
Array read_npy(const std::string &path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open " + path);
    char magic[8];
    in.read(magic, 8);
    if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0)
        throw std::runtime_error(path + ": not a .npy file");
    uint32_t header_len = 0;
    if (magic[6] == 1)
    {
        unsigned char b[2];
        in.read(reinterpret_cast<char *>(b), 2);
        header_len = b[0] | (b[1] << 8);
    }
    else
    {
        unsigned char b[4];
        in.read(reinterpret_cast<char *>(b), 4);
        header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
    }
    std::string header(header_len, '\0');
    in.read(&header[0], header_len);
    if (header.find("'descr': '<f4'") == std::string::npos)
        throw std::runtime_error(path + ": not little-endian float32 (" + header + ")");
    if (header.find("'fortran_order': False") == std::string::npos)
        throw std::runtime_error(path + ": Fortran order is not supported");
    const size_t open = header.find('(', header.find("'shape'"));
    const size_t close = header.find(')', open);
    Array array;
    std::stringstream dims(header.substr(open + 1, close - open - 1));
    std::string item;
    size_t count = 1;
    while (std::getline(dims, item, ','))
    {
        if (item.find_first_not_of(" ") == std::string::npos)
            continue;
        array.shape.push_back(std::stoul(item));
        count *= array.shape.back();
    }
    array.data.resize(count);
    in.read(reinterpret_cast<char *>(array.data.data()), count * sizeof(float));
    if (!in)
        throw std::runtime_error(path + ": truncated");
    return array;
}

size_t dim(const ITensor &tensor, DataLayoutDimension which)
{
    return get_data_layout_dimension_index(tensor.info()->data_layout(), which);
}

// Weights of a standard convolution (HWIO) or a depthwise one (HWC1), or a bias (C), written into the tensor in
// whatever layout the graph gave it (NHWC: [I, W, H, O]; NCHW: [W, H, I, O]; depthwise without O).
class WeightsAccessor final : public ITensorAccessor
{
public:
    WeightsAccessor(Array array, bool depthwise) : _array(std::move(array)), _depthwise(depthwise)
    {
    }
    bool access_tensor(ITensor &tensor) override
    {
        const auto &s = _array.shape;
        if (s.size() == 1)
        {
            for (size_t c = 0; c < s[0]; ++c)
                *reinterpret_cast<float *>(tensor.ptr_to_element(Coordinates(c))) = _array.data[c];
            return true;
        }
        const size_t kh = s[0], kw = s[1], ci = s[2], co = s[3];
        const size_t iw = dim(tensor, DataLayoutDimension::WIDTH), ih = dim(tensor, DataLayoutDimension::HEIGHT),
                     ic = dim(tensor, DataLayoutDimension::CHANNEL);
        for (size_t h = 0; h < kh; ++h)
            for (size_t w = 0; w < kw; ++w)
                for (size_t i = 0; i < ci; ++i)
                    for (size_t o = 0; o < co; ++o)
                    {
                        Coordinates at;
                        at.set(iw, w);
                        at.set(ih, h);
                        at.set(ic, i);
                        if (!_depthwise)
                            at.set(3, o);
                        *reinterpret_cast<float *>(tensor.ptr_to_element(at)) =
                            _array.data[((h * kw + w) * ci + i) * co + o];
                    }
        return true;
    }

private:
    Array _array;
    bool  _depthwise;
};

// The input: NHWC float32 from the host buffer. After a TIME command's first run the same input stays on the
// device: the accessor then neither maps nor copies (access_tensor_data() false; 20.08 still maps it).
class InputAccessor final : public ITensorAccessor
{
public:
    InputAccessor(const std::vector<float> &host, size_t n, size_t h, size_t w, const bool &copy)
        : _host(host), _n(n), _h(h), _w(w), _copy(copy)
    {
    }
#if REQUESTFLOW_ARMCL_VERSION > 2008 // ArmCL 20.08: no access_tensor_data(), the input is mapped on every run
    bool access_tensor_data() override
    {
        return _copy;
    }
#endif
    bool access_tensor(ITensor &tensor) override
    {
        if (!_copy)
            return true;
        const size_t iw = dim(tensor, DataLayoutDimension::WIDTH), ih = dim(tensor, DataLayoutDimension::HEIGHT),
                     ic = dim(tensor, DataLayoutDimension::CHANNEL), in = dim(tensor, DataLayoutDimension::BATCHES);
        for (size_t b = 0; b < _n; ++b)
            for (size_t y = 0; y < _h; ++y)
                for (size_t x = 0; x < _w; ++x)
                    for (size_t c = 0; c < 3; ++c)
                    {
                        Coordinates at;
                        at.set(iw, x);
                        at.set(ih, y);
                        at.set(ic, c);
                        at.set(in, b);
                        *reinterpret_cast<float *>(tensor.ptr_to_element(at)) =
                            _host[((b * _h + y) * _w + x) * 3 + c];
                    }
        return true;
    }

private:
    const std::vector<float> &_host;
    size_t                    _n, _h, _w;
    const bool               &_copy;
};

// The softmax output, [classes, batch] after the flatten, into the host buffer. Returns false: one graph run per
// Stream::run() (GraphManager::execute_graph loops while the accessors return true).
class OutputAccessor final : public ITensorAccessor
{
public:
    OutputAccessor(std::vector<float> &host, size_t n, size_t classes) : _host(host), _n(n), _classes(classes)
    {
    }
    bool access_tensor(ITensor &tensor) override
    {
        for (size_t b = 0; b < _n; ++b)
            for (size_t k = 0; k < _classes; ++k)
                _host[b * _classes + k] = *reinterpret_cast<float *>(tensor.ptr_to_element(Coordinates(k, b)));
        return false;
    }

private:
    std::vector<float> &_host;
    size_t              _n, _classes;
};

struct Options
{
    std::string weights, target = "CL", layout = "NHWC", conv_method = "DEFAULT", conv_methods_file,
                         tuner = "NONE", tuner_file;
    size_t resolution = 224, batch = 1;
    int    threads = 0;
};

graph::ConvolutionMethod parse_method(const std::string &name)
{
    static const std::map<std::string, graph::ConvolutionMethod> methods = {
        {"DEFAULT", graph::ConvolutionMethod::Default}, {"GEMM", graph::ConvolutionMethod::GEMM},
        {"DIRECT", graph::ConvolutionMethod::Direct},   {"WINOGRAD", graph::ConvolutionMethod::Winograd}};
    auto found = methods.find(name);
    if (found == methods.end())
        throw std::invalid_argument("unknown convolution method " + name + " (DEFAULT, GEMM, DIRECT, WINOGRAD)");
    return found->second;
}

std::string json_escape(const std::string &text)
{
    std::string out;
    for (char c : text)
    {
        if (c == '"' || c == '\\')
            out += '\\';
        out += (c == '\n' ? ' ' : c);
    }
    return out;
}

void reply(const std::string &line)
{
    std::fputs((line + "\n").c_str(), protocol_out);
    std::fflush(protocol_out);
}

double seconds_since(std::chrono::steady_clock::time_point start)
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(const Options &opt)
{
    const auto start = std::chrono::steady_clock::now();
    const Target     target = opt.target == "CL" ? Target::CL : Target::NEON;
    const DataLayout layout = opt.layout == "NHWC" ? DataLayout::NHWC : DataLayout::NCHW;

    // Per-layer convolution methods: "<layer> <METHOD>" lines (conv0, pw1..pw13, logits); '#' starts a comment.
    std::map<std::string, std::string> per_layer;
    if (!opt.conv_methods_file.empty())
    {
        std::ifstream in(opt.conv_methods_file);
        if (!in)
            throw std::invalid_argument("cannot read " + opt.conv_methods_file);
        std::string line;
        while (std::getline(in, line))
        {
            std::istringstream words(line.substr(0, line.find('#')));
            std::string        layer, method;
            if (words >> layer >> method)
                per_layer[layer] = method;
        }
    }
    std::map<std::string, std::string> used_methods;
    auto method_for = [&](const std::string &layer, size_t kernel, size_t stride)
    {
        auto        found = per_layer.find(layer);
        std::string name  = found != per_layer.end() ? found->second : opt.conv_method;
        parse_method(name);
        // Winograd is for 3x3 stride-1 convolutions: asked for globally it applies where allowed (none of
        // MobileNet-v1's standard convolutions), asked for a layer that does not allow it, it is refused.
        if (name == "WINOGRAD" && !(kernel == 3 && stride == 1))
        {
            if (found != per_layer.end())
                throw std::invalid_argument("layer " + layer + " does not allow WINOGRAD (" +
                                            std::to_string(kernel) + "x" + std::to_string(kernel) + " stride " +
                                            std::to_string(stride) + ")");
            name = "DEFAULT";
        }
        used_methods[layer] = name;
        return parse_method(name);
    };
    for (const auto &entry : per_layer)
    {
        const std::string &l = entry.first;
        if (l != "conv0" && l != "logits" && !(l.size() > 2 && l.compare(0, 2, "pw") == 0))
            throw std::invalid_argument("per-layer method for " + l + ": only conv0, pw1..pw13 and logits are "
                                        "convolutions with a method");
    }

    auto load = [&](const std::string &name) { return read_npy(opt.weights + "/" + name + ".npy"); };
    const size_t res = opt.resolution, n = opt.batch;
    Array        conv0 = load("conv0.weights");
    Array        logits_w = load("logits.weights");
    const size_t classes = logits_w.shape.at(3);
    if (conv0.shape.size() != 4 || conv0.shape[0] != 3 || conv0.shape[2] != 3)
        throw std::invalid_argument("conv0.weights is not (3, 3, 3, C)");

    std::vector<float> input(n * res * res * 3, 0.f), output(n * classes, 0.f);
    bool               copy_input = true;

    Stream graph(0, "requestflow-mobilenet-v1");
    const TensorShape shape = layout == DataLayout::NHWC ? TensorShape(3U, res, res, n) : TensorShape(res, res, 3U, n);
    graph << target << FastMathHint::Disabled << DepthwiseConvolutionMethod::Default;
    graph << InputLayer(TensorDescriptor(shape, DataType::F32).set_layout(layout),
                        std::make_unique<InputAccessor>(input, n, res, res, copy_input));
    const ActivationLayerInfo relu6(ActivationLayerInfo::ActivationFunction::BOUNDED_RELU, 6.f);
    const PadStrideInfo       same_s2(2, 2, 0, 1, 0, 1, DimensionRoundingType::FLOOR), same_s1(1, 1, 1, 1),
        none(1, 1, 0, 0);
    graph << method_for("conv0", 3, 2)
          << ConvolutionLayer(3U, 3U, conv0.shape[3], std::make_unique<WeightsAccessor>(conv0, false),
                              std::make_unique<WeightsAccessor>(load("conv0.bias"), false), same_s2)
                 .set_name("conv0")
          << ActivationLayer(relu6).set_name("conv0/relu6");
    for (int block = 1; block <= 13; ++block)
    {
        const std::string dw = "dw" + std::to_string(block), pw = "pw" + std::to_string(block);
        const bool        s2 = block == 2 || block == 4 || block == 6 || block == 12;
        Array             pw_w = load(pw + ".weights");
        const size_t      out  = pw_w.shape.at(3);
        graph << DepthwiseConvolutionLayer(3U, 3U, std::make_unique<WeightsAccessor>(load(dw + ".weights"), true),
                                           std::make_unique<WeightsAccessor>(load(dw + ".bias"), false),
                                           s2 ? same_s2 : same_s1)
                     .set_name(dw)
              << ActivationLayer(relu6).set_name(dw + "/relu6") << method_for(pw, 1, 1)
              << ConvolutionLayer(1U, 1U, out, std::make_unique<WeightsAccessor>(std::move(pw_w), false),
                                  std::make_unique<WeightsAccessor>(load(pw + ".bias"), false), none)
                     .set_name(pw)
              << ActivationLayer(relu6).set_name(pw + "/relu6");
    }
    graph << PoolingLayer(PoolingLayerInfo(PoolingType::AVG, layout)).set_name("avgpool") << method_for("logits", 1, 1)
          << ConvolutionLayer(1U, 1U, classes, std::make_unique<WeightsAccessor>(std::move(logits_w), false),
                              std::make_unique<WeightsAccessor>(load("logits.bias"), false), none)
                 .set_name("logits")
          << FlattenLayer().set_name("flatten") << SoftmaxLayer().set_name("softmax")
          << OutputLayer(std::make_unique<OutputAccessor>(output, n, classes));

    GraphConfig config;
    config.num_threads = opt.threads;
    config.use_tuner   = opt.tuner != "NONE";
    config.tuner_mode  = opt.tuner == "RAPID"    ? CLTunerMode::RAPID
                         : opt.tuner == "NORMAL" ? CLTunerMode::NORMAL
                                                 : CLTunerMode::EXHAUSTIVE;
    config.tuner_file  = opt.tuner_file;
#if REQUESTFLOW_ARMCL_VERSION > 2008 // ArmCL 20.08: no MLGO heuristics (GraphConfig::mlgo_file)
    config.mlgo_file   = "";
#endif
    graph.finalize(target, config);
    const double finalize_s = seconds_since(start);
    const auto   first      = std::chrono::steady_clock::now();
    graph.run(); // compiles what is left and, with the tuner on, tunes every kernel: before anything is timed
    const double first_run_s = seconds_since(first);

    std::ostringstream ready;
    ready << "READY {\"classes\": " << classes << ", \"batch\": " << n << ", \"resolution\": " << res
          << ", \"target\": \"" << opt.target << "\", \"layout\": \"" << opt.layout << "\", \"tuner\": \""
          << opt.tuner << "\", \"finalize_s\": " << finalize_s << ", \"first_run_s\": " << first_run_s
          << ", \"conv_methods\": {";
    bool comma = false;
    for (const auto &entry : used_methods)
    {
        ready << (comma ? ", " : "") << "\"" << entry.first << "\": \"" << entry.second << "\"";
        comma = true;
    }
    ready << "}}";
    reply(ready.str());

    std::string line;
    while (std::getline(std::cin, line))
    {
        std::istringstream words(line);
        std::string        command;
        words >> command;
        if (command == "INFER")
        {
            std::cin.read(reinterpret_cast<char *>(input.data()), input.size() * sizeof(float));
            if (!std::cin)
                throw std::runtime_error("INFER: input cut short");
            copy_input = true;
            graph.run();
            reply("SCORES " + std::to_string(output.size()));
            std::fwrite(output.data(), sizeof(float), output.size(), protocol_out);
            std::fflush(protocol_out);
        }
        else if (command == "TIME")
        {
            long warmup = -1, repetitions = -1;
            words >> warmup >> repetitions;
            if (warmup < 0 || repetitions < 1)
                throw std::invalid_argument("TIME <warmup >= 0> <repetitions >= 1>");
            copy_input = true;
            graph.run(); // the input onto the device, once (not counted)
            copy_input = false;
            for (long i = 0; i < warmup; ++i)
                graph.run();
            std::ostringstream times;
            times.precision(9);
            times << "TIMES {\"samples\": [";
            for (long i = 0; i < repetitions; ++i)
            {
                const auto t0 = std::chrono::steady_clock::now();
                graph.run(); // ends with the output mapped (blocking) and the backends synchronised
                times << (i ? ", " : "") << seconds_since(t0);
            }
            times << "]}";
            copy_input = true;
            reply(times.str());
        }
        else if (command == "QUIT")
            break;
        else if (!command.empty())
            throw std::invalid_argument("unknown command " + command);
    }
    return 0;
}
} // namespace

int main(int argc, char **argv)
{
    // The protocol keeps the original stdout; anything ArmCL or a driver prints goes to stderr.
    int protocol_fd = dup(1);
    dup2(2, 1);
    protocol_out = fdopen(protocol_fd, "wb");
    Options opt;
    try
    {
        for (int i = 1; i < argc; ++i)
        {
            std::string arg = argv[i];
            auto        value = [&]() -> std::string
            {
                if (i + 1 >= argc)
                    throw std::invalid_argument(arg + " needs a value");
                return argv[++i];
            };
            if (arg == "--weights")
                opt.weights = value();
            else if (arg == "--resolution")
                opt.resolution = std::stoul(value());
            else if (arg == "--batch")
                opt.batch = std::stoul(value());
            else if (arg == "--target")
                opt.target = value();
            else if (arg == "--layout")
                opt.layout = value();
            else if (arg == "--conv-method")
                opt.conv_method = value();
            else if (arg == "--conv-methods-file")
                opt.conv_methods_file = value();
            else if (arg == "--tuner")
                opt.tuner = value();
            else if (arg == "--tuner-file")
                opt.tuner_file = value();
            else if (arg == "--threads")
                opt.threads = std::stoi(value());
            else
                throw std::invalid_argument("unknown argument " + arg);
        }
        if (opt.weights.empty())
            throw std::invalid_argument("--weights DIR is required");
        if (opt.target != "CL" && opt.target != "NEON")
            throw std::invalid_argument("--target CL or NEON");
        if (opt.layout != "NHWC" && opt.layout != "NCHW")
            throw std::invalid_argument("--layout NHWC or NCHW");
        if (opt.tuner != "NONE" && opt.tuner != "RAPID" && opt.tuner != "NORMAL" && opt.tuner != "EXHAUSTIVE")
            throw std::invalid_argument("--tuner NONE, RAPID, NORMAL or EXHAUSTIVE");
        if (opt.tuner != "NONE" && opt.tuner_file.empty())
            throw std::invalid_argument("--tuner " + opt.tuner + " needs --tuner-file");
        parse_method(opt.conv_method);
        if (opt.resolution < 32 || opt.batch < 1)
            throw std::invalid_argument("--resolution >= 32 and --batch >= 1");
    }
    catch (const std::exception &exc)
    {
        reply(std::string("ERROR ") + json_escape(exc.what()));
        return 2;
    }
    try
    {
        return run(opt);
    }
    catch (const std::exception &exc)
    {
        reply(std::string("ERROR ") + json_escape(exc.what()));
        return 1;
    }
}
