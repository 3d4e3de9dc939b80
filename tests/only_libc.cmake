# The release binary must load no shared library but the C library (and
# name the dynamic loader, which is mapped for every program anyway: the
# unwinder asks it for _dl_find_object). Every other library costs its
# mapping, relocations and page faults at each start (docs/architecture.md,
# "Start-up cost"). Run by CTest as
#   cmake -DBIN=path/to/cskit -DREADELF=readelf -P only_libc.cmake
execute_process(COMMAND ${READELF} --dynamic ${BIN} OUTPUT_VARIABLE dynamic RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${READELF} --dynamic ${BIN} failed (${rc})")
endif()
string(REGEX MATCHALL "\\(NEEDED\\)[^\n]*\\[[^]\n]+\\]" needed "${dynamic}")
set(libraries "")
foreach(entry IN LISTS needed)
  string(REGEX REPLACE ".*\\[([^]]+)\\]$" "\\1" library "${entry}")
  if(NOT library MATCHES "^ld-linux[-a-z0-9_.]*\\.so\\.[0-9]+$")
    list(APPEND libraries "${library}")
  endif()
endforeach()
if(NOT libraries STREQUAL "libc.so.6")
  message(FATAL_ERROR "${BIN} loads [${libraries}]; it must load libc.so.6 only")
endif()
message(STATUS "${BIN} loads ${libraries} only")
