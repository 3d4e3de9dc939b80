// The one translation unit that compiles Asio's implementation
// (BOOST_ASIO_SEPARATE_COMPILATION): every other file only sees declarations,
// which keeps rebuilds fast.
#include <boost/asio/impl/src.hpp>
