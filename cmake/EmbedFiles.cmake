# Turns every file in SRC_DIR into a byte array in a C file with a lookup function (cmake -P).
# Parameters: SRC_DIR (directory, not recursive), OUT (the .c to write), NAME (C identifier of the
# lookup function). The generated file defines
#   const unsigned char *NAME(const char *file, size_t *size);
# returning the bytes of SRC_DIR/<file> (NUL-terminated, size without the NUL) or NULL.
# Bytes, not string literals: any content (binary too) survives, and no compiler limit on the
# length of a literal applies.
foreach(v SRC_DIR OUT NAME)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "EmbedFiles.cmake: -D${v}=... is required")
  endif()
endforeach()
file(GLOB files LIST_DIRECTORIES false RELATIVE ${SRC_DIR} ${SRC_DIR}/*)
list(SORT files)
set(arrays "")
set(table "")
set(i 0)
foreach(f ${files})
  # Editor leftovers and hidden files are not part of what is served.
  if(f MATCHES "^\\." OR f MATCHES "~$")
    continue()
  endif()
  if(NOT f MATCHES "^[A-Za-z0-9._-]+$")
    message(FATAL_ERROR "EmbedFiles.cmake: ${f}: file names may hold only A-Z a-z 0-9 . _ -")
  endif()
  file(READ ${SRC_DIR}/${f} hex HEX)
  file(SIZE ${SRC_DIR}/${f} size)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  # 16 bytes a line keeps the generated file readable in a diff or a debugger.
  string(REGEX REPLACE "((0x..,){16})" "\\1\n    " bytes "${bytes}")
  string(APPEND arrays "static const unsigned char file_${i}[] = {\n    ${bytes}0x00};\n")
  string(APPEND table "    {\"${f}\", file_${i}, ${size}},\n")
  math(EXPR i "${i} + 1")
endforeach()
file(WRITE ${OUT}.tmp "/* Generated from ${SRC_DIR} by cmake/EmbedFiles.cmake. Do not edit. */
#include <stddef.h>
#include <string.h>

${arrays}
static const struct {
    const char *name;
    const unsigned char *data;
    size_t size;
} files[] = {
${table}    {NULL, NULL, 0}};

const unsigned char *${NAME}(const char *file, size_t *size);
const unsigned char *${NAME}(const char *file, size_t *size)
{
    for (size_t i = 0; files[i].name; i++) {
        if (!strcmp(files[i].name, file)) {
            *size = files[i].size;
            return files[i].data;
        }
    }
    return NULL;
}
")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
file(REMOVE ${OUT}.tmp)
