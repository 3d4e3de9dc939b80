# The release binary must be a static position-independent executable:
# no program interpreter and no shared library to load at each start
# (docs/architecture.md, "A static PIE"), yet still randomised by ASLR,
# with full RELRO (read-only relocations, bound at start) and a stack that
# is not executable. Run by CTest as
#   cmake -DBIN=path/to/cskit -DREADELF=readelf -P static_pie.cmake
# GNU readelf, one line per program header (-W), untranslated (LC_ALL=C).
execute_process(COMMAND ${CMAKE_COMMAND} -E env LC_ALL=C
                        ${READELF} -W --file-header --program-headers --dynamic ${BIN}
                OUTPUT_VARIABLE elf RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${READELF} failed on ${BIN} (${rc})")
endif()
set(problems "")
if(NOT elf MATCHES "Type:[ \t]+DYN ")
  list(APPEND problems "not position-independent (ELF type is not DYN), so not randomised")
endif()
if(elf MATCHES "\n[ \t]+INTERP[ \t]")
  list(APPEND problems "has a program interpreter (it is dynamically linked)")
endif()
string(REGEX MATCHALL "\\(NEEDED\\)[^\n]*\\[[^]\n]+\\]" needed "${elf}")
if(needed)
  list(APPEND problems "needs shared libraries: ${needed}")
endif()
if(NOT elf MATCHES "\n[ \t]+GNU_RELRO[ \t]")
  list(APPEND problems "has no RELRO segment")
endif()
if(NOT elf MATCHES "\\(FLAGS\\)[^\n]*BIND_NOW" AND NOT elf MATCHES "\\(FLAGS_1\\)[^\n]*Flags:[^\n]* NOW")
  list(APPEND problems "is not bound at start (-z now), so its RELRO is partial")
endif()
if(NOT elf MATCHES "\n[ \t]+GNU_STACK[^\n]*[ \t]RW[ \t]")
  list(APPEND problems "its stack is not marked RW (non-executable)")
endif()
if(problems)
  list(JOIN problems "; " text)
  message(FATAL_ERROR "${BIN}: ${text}")
endif()
message(STATUS "${BIN} is a static PIE with full RELRO and a non-executable stack")
