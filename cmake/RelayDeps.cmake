# Finds every dependency through pkg-config (or its CMake package) and stops the configure step
# with the Debian package to install when one is missing.
find_package(PkgConfig)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "pkg-config not found: apt-get install pkg-config")
endif()

function(relay_require_pkg target module debpkg)
  pkg_check_modules(${target} QUIET IMPORTED_TARGET ${module})
  if(NOT ${target}_FOUND)
    message(FATAL_ERROR "Missing dependency '${module}': apt-get install ${debpkg}")
  endif()
endfunction()

relay_require_pkg(CURL libcurl libcurl4-openssl-dev)
relay_require_pkg(PQ libpq libpq-dev)
relay_require_pkg(HIREDIS hiredis libhiredis-dev)
relay_require_pkg(JANSSON jansson libjansson-dev)
relay_require_pkg(JWT libjwt libjwt-dev)
relay_require_pkg(XCRYPT libxcrypt libcrypt-dev)
relay_require_pkg(YAML yaml-0.1 libyaml-dev)
relay_require_pkg(SQLITE sqlite3 libsqlite3-dev)
# libcrypto: AES-256-GCM and HKDF for the upstream keys stored in the database.
relay_require_pkg(CRYPTO libcrypto libssl-dev)

# Debian's civetweb CMake package also wants the civetweb program installed, so look up the
# header and library directly.
find_path(CIVETWEB_INCLUDE_DIR civetweb.h)
find_library(CIVETWEB_LIBRARY civetweb)
if(NOT CIVETWEB_INCLUDE_DIR OR NOT CIVETWEB_LIBRARY)
  message(FATAL_ERROR "Missing dependency 'civetweb': apt-get install libcivetweb-dev")
endif()
add_library(civetweb::civetweb UNKNOWN IMPORTED)
set_target_properties(civetweb::civetweb PROPERTIES IMPORTED_LOCATION ${CIVETWEB_LIBRARY}
  INTERFACE_INCLUDE_DIRECTORIES ${CIVETWEB_INCLUDE_DIR} INTERFACE_LINK_LIBRARIES dl)
find_package(Threads REQUIRED)

set(RELAY_PRIVATE_DEPS PkgConfig::CURL PkgConfig::PQ PkgConfig::HIREDIS PkgConfig::JANSSON
    PkgConfig::JWT PkgConfig::XCRYPT PkgConfig::YAML PkgConfig::SQLITE PkgConfig::CRYPTO Threads::Threads m)

if(RELAY_BUILD_TESTS)
  relay_require_pkg(CMOCKA cmocka libcmocka-dev)
endif()
